"""Shared test setup: a persistent compilation cache, the repo root, and helpers to run the real CLI."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
  """One finished tiny run shared by the tests that only read a workdir."""
  workdir = tmp_path_factory.mktemp("runs") / "tiny"
  run_cli(*TINY, "--workdir", workdir, "--config.train.steps=12", "--config.checkpoint.every_steps=6",
          "--config.profile.start_step=3", "--config.profile.num_steps=2")
  return workdir
