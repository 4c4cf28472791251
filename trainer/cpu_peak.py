"""A CPU's matmul peak, measured once per CPU model and cached in $XDG_CACHE_HOME/tessera/cpu_peak.json.

Why: re-measuring at every start gave 54-145 GFLOP/s for one machine (the run's own threads, other jobs), so MFU
of one model read 5.7% or 52.7% and jumped at resume. A cached figure makes MFU comparable across runs and resumes.
Delete the file (or the CPU's entry) to measure again. A figure measured while the machine is busy is used for that
run only, never cached.
"""
import json
import math
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp


def cache_path():
  root = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
  return pathlib.Path(root).expanduser() / "tessera" / "cpu_peak.json"


def cpu_model():
  """The CPU's model name (/proc/cpuinfo on Linux), plus the core count JAX sees: the cache key."""
  name = None
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.lower().startswith("model name"):
        name = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  name = name or platform.processor() or platform.machine() or "unknown cpu"
  return f"{name} x{os.cpu_count()}"


def measure(dtype, n=1024, repeats=10):
  """Best-of-`repeats` FLOP/s of an n x n matmul in `dtype` (f32 accumulation) on the first local device."""
  a = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32), device=jax.local_devices()[0])
  matmul(a, a).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def _read(path):
  try:
    value = json.loads(path.read_text())
  except (OSError, ValueError):
    return {}
  return value if isinstance(value, dict) else {}


def _write(path, table):
  """Atomic (tmp + rename); a read-only cache only costs a re-measurement next time."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
  except OSError:
    pass


def peak(dtypes, measure_fn=measure):
  """(FLOP/s of the whole CPU, how it was found): the best of `dtypes`' cached or newly measured matmul rates."""
  path, key = cache_path(), cpu_model()
  table = _read(path)
  entry = table.get(key) if isinstance(table.get(key), dict) else {}
  missing = [d for d in dtypes if not isinstance(entry.get(d), (int, float)) or entry[d] <= 0]
  for dtype in missing:
    entry[dtype] = float(measure_fn(dtype))
  if missing and busy():
    return max(entry[d] for d in dtypes), (f"measured now for {key!r} under load (load average "
                                           f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): not cached, MFU "
                                           "reads high")
  if missing:
    table[key] = entry
    _write(path, table)
  how = f"measured now for {key!r}" if missing else f"measured once for {key!r}"
  return max(entry[d] for d in dtypes), f"{how}, cached in {path}"


BUSY_LOAD_PER_CORE = 0.5


def busy():
  """Other work on the CPU (1-minute load average above half the core count): a peak measured now would be low and,
  once cached, inflate every later run's MFU (seen: 87% MFU from a peak measured beside four other jobs; and on 2
  cores, one other job was enough: fp32 105 GFLOP/s cached at load < 2 vs 275-292 measured quiet)."""
  try:
    return os.getloadavg()[0] > BUSY_LOAD_PER_CORE * (os.cpu_count() or 1)
  except OSError:
    return False
