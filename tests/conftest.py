"""Shared test setup: a persistent compilation cache and the trained-workdir fixture."""
import os

import pytest

from tessera_testing import ROOT, TINY, run_cli

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session", autouse=True)
def _cache_home(tmp_path_factory):
  """The CPU peak cache (tessera.trainer.cpu_peak) in a tmp dir: tests never read or write the user's ~/.cache."""
  os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
  """One finished tiny run shared by the tests that only read a workdir."""
  workdir = tmp_path_factory.mktemp("runs") / "tiny"
  run_cli(*TINY, "--workdir", workdir, "--config.train.steps=12", "--config.checkpoint.every_steps=6",
          "--config.profile.start_step=3", "--config.profile.num_steps=2")
  return workdir
