"""Throughput accounting (tokens/s, TFLOP/s and MFU per device), TensorBoard output and the progress line."""
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per chip (vendor datasheets); fp32 compute on these is not what MFU is quoted against.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12, "TPU7x": 2307e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA B200": 2250e12, "NVIDIA A100": 312e12,
}


def peak_flops_per_device(dtype):
  """Table lookup by device kind. On CPU, the best of an fp32 and a compute-dtype matmul measured at start-up (a CPU
  without native bf16 runs bf16 matmuls slower than fp32; its peak is still the fp32 one), shared by fake devices."""
  device = jax.local_devices()[0]
  for kind, flops in PEAK_FLOPS.items():
    if device.device_kind.startswith(kind):
      return flops
  peak = max(measure_cpu_matmul_peak(d) for d in {"float32", dtype})
  return peak / jax.local_device_count()


def measure_cpu_matmul_peak(dtype, n=1024, repeats=5):
  a = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32), device=jax.local_devices()[0])
  matmul(a, a).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def device_memory_gb():
  stats = jax.local_devices()[0].memory_stats() or {}
  used = stats.get("peak_bytes_in_use", stats.get("bytes_in_use"))
  return None if used is None else used / 1e9


class Writer:
  """tensorboardX scalars/text under <workdir>/tb, written by process 0 only."""

  def __init__(self, workdir):
    self.tb = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(str(workdir / "tb"), flush_secs=30)

  def scalars(self, step, values, prefix):
    if self.tb:
      for name, value in values.items():
        self.tb.add_scalar(f"{prefix}/{name}", float(value), step)

  def text(self, tag, text, step=0):
    if self.tb:
      self.tb.add_text(tag, text, step)

  def flush(self):
    if self.tb:
      self.tb.flush()

  def close(self):
    if self.tb:
      self.tb.close()


def is_finite(metrics):
  return all(np.isfinite(v) for v in metrics.values())


class Progress:
  """One line per report: step, loss, tokens/s, ETA; redrawn in place on a terminal."""

  def __init__(self, total_steps, start_step, every):
    self.total, self.every = total_steps, every
    self.tty = sys.stderr.isatty()
    self.start_time, self.start_step = time.perf_counter(), start_step

  def update(self, step, loss, tokens_per_second, force=False):
    if jax.process_index() != 0 or not (force or self.tty or step % self.every == 0):
      return
    elapsed = time.perf_counter() - self.start_time
    rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else 0.0
    line = (f"step {step}/{self.total} | loss {loss:.4f} | {tokens_per_second / 1e3:.1f}k tok/s | "
            f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
    end = "" if self.tty and not force and step < self.total else "\n"
    print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)
