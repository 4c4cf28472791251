"""Helpers shared by the test files: the repo root and running the real CLI / reading TensorBoard.

(Not in conftest.py: several conftest.py files exist, and `from conftest import` would pick whichever came first.)
"""
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args, devices=None, timeout=600, check=True, env=None):
  """`python -m tessera.trainer ARGS` in a subprocess (fresh JAX, optional fake CPU devices)."""
  environ = {**os.environ, **(env or {})}
  if devices:
    environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  result = subprocess.run([sys.executable, "-m", "tessera.trainer", *map(str, args)], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
  return result


def tb_scalars(workdir, tag):
  """{step: [values...]} of a TensorBoard scalar tag (all events under <workdir>/tb)."""
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(pathlib.Path(workdir) / "tb"),
                                           size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  out = {}
  for event in acc.Scalars(tag):
    out.setdefault(event.step, []).append(event.value)
  return out


TINY = ("--config", "configs/lm.py:tiny")


def run_json_script(code, devices, timeout=600):
  """Runs `python -c code` on `devices` fake CPU devices; returns the JSON its last stdout line prints."""
  environ = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def restore_states(*runs):
  """The saved train states of (workdir, step) pairs as {keystr: numpy} each, read with plain Orbax in one
  subprocess (so a test compares checkpoints without tessera)."""
  import numpy as np
  code = """
import json, sys, jax, numpy as np, orbax.checkpoint as ocp
for path, out in json.loads(sys.argv[1]):
  state = ocp.PyTreeCheckpointer().restore(path)
  np.savez(out, **{jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state)})
"""
  pairs = [(str(w / "checkpoints" / str(s) / "state"), str(w.parent / f"{w.name}_{s}.npz")) for w, s in runs]
  subprocess.run([sys.executable, "-c", code, json.dumps(pairs)], check=True, cwd=ROOT)
  return [dict(np.load(out)) for _, out in pairs]
