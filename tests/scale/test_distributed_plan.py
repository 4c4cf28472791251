"""Who joins which process group, decided from flags and environment alone; a coordinator nobody serves fails fast."""
import os
import re
import subprocess
import sys
import time

import portpicker
import pytest

from tessera_testing import ROOT, TINY
from tessera.trainer import distributed
from tessera.trainer.config_loader import ConfigError


def test_single_process_by_default_and_when_switched_off():
  assert distributed.plan({}, {}) is None
  assert distributed.plan({}, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
  assert distributed.plan({}, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16", "TESSERA_DISTRIBUTED": "off"}) is None


def test_explicit_flags_win_over_environment():
  env = {"TESSERA_COORDINATOR": "10.0.0.1:1234", "TESSERA_NUM_PROCESSES": "4", "TESSERA_PROCESS_ID": "3",
         "TESSERA_INIT_TIMEOUT": "7", "TESSERA_HEARTBEAT_TIMEOUT": "9"}
  assert distributed.plan({}, env) == distributed.Group("flags", "10.0.0.1:1234", 4, 3, 7, 9)
  group = distributed.plan({"process_id": "1"}, env)
  assert (group.process_id, group.num_processes) == (1, 4)
  flags, rest = distributed.split_flags(["--coordinator", "h:1", "--num-processes=2", "--process-id", "0",
                                         "--config.train.steps=3"])
  assert flags == {"coordinator": "h:1", "num_processes": "2", "process_id": "0"}
  assert rest == ["--config.train.steps=3"]


def test_cluster_environments_defer_to_jax_detection():
  assert distributed.plan({}, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}).source == "slurm"
  assert distributed.plan({}, {"TESSERA_DISTRIBUTED": "auto"}).source == "auto"
  assert distributed.plan({}, {"TPU_WORKER_HOSTNAMES": "w0,w1"}).source == "auto"


@pytest.mark.parametrize("env, message", [
    ({"TESSERA_COORDINATOR": "h:1", "TESSERA_NUM_PROCESSES": "2"}, "--process-id (or TESSERA_PROCESS_ID) is missing"),
    ({"TESSERA_COORDINATOR": "h", "TESSERA_NUM_PROCESSES": "2", "TESSERA_PROCESS_ID": "0"}, "expected HOST:PORT"),
    ({"TESSERA_COORDINATOR": "h:1", "TESSERA_NUM_PROCESSES": "2", "TESSERA_PROCESS_ID": "2"}, "is not below"),
    ({"TESSERA_HEARTBEAT_TIMEOUT": "soon"}, "TESSERA_HEARTBEAT_TIMEOUT: expected an integer"),
    ({"TESSERA_DISTRIBUTED": "yes"}, "expected 'auto' or 'off'"),
])
def test_bad_values_are_config_errors(env, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    distributed.plan({}, env)


def _cli(env, *args):
  environ = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
  return subprocess.run([sys.executable, "-m", "tessera.trainer", *map(str, args)], cwd=ROOT, env=environ,
                        capture_output=True, text=True, timeout=120)


def test_bad_join_flag_exits_2_before_heavy_imports(tmp_path):
  began = time.perf_counter()
  result = _cli({}, *TINY, "--workdir", tmp_path / "w", "--num-processes", "two", "--process-id", "0",
                "--coordinator", "127.0.0.1:1")
  assert result.returncode == 2 and time.perf_counter() - began < 10
  assert result.stderr.strip() == "error: --num-processes: expected an integer, got 'two'"
  assert not (tmp_path / "w").exists()


def test_peer_that_never_arrives_fails_within_the_timeout_naming_the_coordinator(tmp_path):
  coordinator = f"127.0.0.1:{portpicker.pick_unused_port()}"
  env = {"TESSERA_COORDINATOR": coordinator, "TESSERA_NUM_PROCESSES": "2", "TESSERA_PROCESS_ID": "0",
         "TESSERA_INIT_TIMEOUT": "3"}
  began = time.perf_counter()
  result = _cli(env, *TINY, "--workdir", tmp_path / "w")
  assert result.returncode == 1 and time.perf_counter() - began < 60
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: process 0 of 2 (coordinator {coordinator}): could not join within 3s"), last
  assert not (tmp_path / "w").exists()
