"""Launchers: the local watchdog and timeout, cluster sweeps fanned out one job per point, the AOT memory check."""
import importlib.util
import json
import subprocess
import sys
import time

from tessera_testing import ROOT


def _local():
  spec = importlib.util.spec_from_file_location("launch_local", ROOT / "launch" / "local.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_process_env_sets_join_variables_and_replaces_device_count():
  env = _local().process_env(1, 2, 4, "127.0.0.1:99", base={"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --x=1"})
  assert (env["TESSERA_COORDINATOR"], env["TESSERA_NUM_PROCESSES"], env["TESSERA_PROCESS_ID"]) == ("127.0.0.1:99", "2", "1")
  assert env["XLA_FLAGS"] == "--x=1 --xla_force_host_platform_device_count=4"


def test_watchdog_stops_the_others_when_one_fails(capfd):
  local = _local()
  sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
  failer = [sys.executable, "-c", "import sys, time; print('bye', flush=True); time.sleep(0.5); sys.exit(3)"]
  began = time.perf_counter()
  code = local.supervise([sleeper, failer], [None, None], timeout=60, grace=1)
  assert code == 3 and time.perf_counter() - began < 15
  out, err = capfd.readouterr()
  assert "[p1] bye" in out
  assert "launch/local.py: process 1 exited with code 3; stopping the other 1 process(es)" in err


def test_overall_timeout_stops_everyone(capfd):
  sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
  began = time.perf_counter()
  assert _local().supervise([sleeper, sleeper], [None, None], timeout=1, grace=1) == 124
  assert time.perf_counter() - began < 15
  assert "timed out after 1s; stopping all 2 processes" in capfd.readouterr().err


def _lines(*command):
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  return result.stdout.strip().splitlines()


def test_sweep_fans_out_one_job_per_point_on_both_cluster_launchers():
  trainer_args = ("--config", "configs/lm.py:tiny", "--workdir", "gs://bucket/run")
  pod = _lines("launch/tpu_pod.sh", "--tpu", "pod", "--zone", "z", "--dry-run", "--sweep", "--", *trainer_args)
  runs = [line for line in pod if "tessera.trainer" in line]
  assert len(runs) == 4 and all("--worker=all" in line and "TESSERA_DISTRIBUTED=auto" in line for line in runs)
  assert "gs://bucket/run/optim.lr=0.003\\,seed=1" in runs[3]
  slurm = _lines("launch/slurm.sbatch", "--dry-run", "--sweep", "--", *trainer_args)
  assert len(slurm) == 4 and all(line.startswith("sbatch ") for line in slurm)
  assert "--config.optim.lr=0.001 --config.seed=1" in slurm[1]
  assert len(_lines("launch/slurm.sbatch", "--dry-run", "--", *trainer_args)) == 1


def test_compile_check_flags_a_config_that_cannot_fit():
  result = subprocess.run(["scripts/compile_check", "--config", "configs/lm.py:tiny", "--devices", "8",
                           "--hbm-gb", "0.001", "--config.mesh.data=2", "--config.mesh.fsdp=4"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8 and report["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
  assert not report["fits"] and report["peak_gb"] > 0.001
  assert 0 < report["arguments_gb"] < report["peak_gb"]
  assert "DOES NOT FIT: peak" in result.stdout
