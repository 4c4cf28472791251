"""Launchers: the local watchdog and timeout, cluster sweeps fanned out one job per point, the AOT memory check."""
import importlib.util
import json
import pathlib
import signal
import socket
import subprocess
import sys
import time

import standins
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


# ---- the launchers against stand-in gcloud/sbatch/srun/scontrol (tests/scale/standins.py) ----

TRAINER_ARGS = ("--config", "configs/lm.py:tiny", "--workdir", "gs://bucket/run")


def _launch(env, *command, check=True):
  result = subprocess.run(command, cwd=ROOT, env=env, input="stdin the launcher must not pass on\n",
                          capture_output=True, text=True, timeout=300)
  assert not check or result.returncode == 0, result.stderr
  return result


def test_tpu_pod_runs_every_sweep_point_with_stdin_closed(tmp_path):
  env, log = standins.install(tmp_path)
  _launch(env, "launch/tpu_pod.sh", "--tpu", "pod", "--zone", "z", "--sweep", "--", *TRAINER_ARGS)
  calls = standins.calls(log)
  gcloud = [c["argv"] for c in calls if c["argv"][0] == "gcloud"]
  assert gcloud[0][4] == "scp" and all("--worker=all" in argv for argv in gcloud)
  setup = gcloud[1][-1]
  assert "python3-venv" in setup and "sys.version_info < (3, 11)" in setup and "jax[tpu]" in setup
  workers = [c for c in calls if c["argv"][0] == "worker-python"]
  assert len(workers) == 4, calls  # a stdin-reading ssh used to swallow the points after the first
  assert all(w["argv"][1:3] == ["-m", "tessera.trainer"] and w["distributed"] == "auto" for w in workers)
  assert workers[3]["argv"][-1] == "--config.seed=1"
  assert all(c["stdin"] == "" for c in calls)


def test_tpu_pod_background_logs_per_worker_and_logs_command(tmp_path):
  env, log = standins.install(tmp_path)
  result = _launch(env, "launch/tpu_pod.sh", "--tpu", "pod", "--zone", "z", "--sweep", "--background", "--",
                   *TRAINER_ARGS)
  assert "started, log" in result.stdout and "--logs" in result.stderr
  worker_log = tmp_path / "home" / "tessera" / "logs" / f"tessera-{socket.gethostname()}.log"
  deadline = time.time() + 60
  while time.time() < deadline and (not worker_log.exists() or worker_log.read_text().count("trained") < 4):
    time.sleep(0.2)
  assert worker_log.read_text().count("trained") == 4  # every point, in order, under nohup
  background = [c["argv"][-1] for c in standins.calls(log) if c["argv"][0] == "gcloud"][-1]
  assert "nohup bash -c" in background and "< /dev/null &" in background
  shown = _launch(env, "launch/tpu_pod.sh", "--tpu", "pod", "--zone", "z", "--logs", "--lines", "2")
  assert shown.stdout.count("trained") == 2


def test_slurm_submits_every_sweep_point_with_stdin_closed(tmp_path):
  env, log = standins.install(tmp_path)
  _launch(env, "launch/slurm.sbatch", "--sweep", "--", *TRAINER_ARGS)
  submitted = [c for c in standins.calls(log) if c["argv"][0] == "sbatch"]
  assert len(submitted) == 4 and all(c["stdin"] == "" for c in submitted)
  assert submitted[1]["argv"][-2:] == ["--config.optim.lr=0.001", "--config.seed=1"]
  header = (ROOT / "launch" / "slurm.sbatch").read_text()
  assert "#SBATCH --requeue\n" in header and "#SBATCH --signal=B:USR1@300\n" in header


def _job(tmp_path):
  env, log = standins.install(tmp_path)
  env.update(SLURM_JOB_ID="42", SLURM_NTASKS="2", SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="n1",
             TESSERA_ROOT=str(ROOT))
  proc = subprocess.Popen(["launch/slurm.sbatch", "--", *TRAINER_ARGS], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  started = pathlib.Path(f"{log}.srun_started")
  deadline = time.time() + 60
  while not started.exists() and time.time() < deadline:
    time.sleep(0.1)
  time.sleep(0.3)  # the script is in `wait` with its traps set
  return proc, log


def test_slurm_time_limit_signal_saves_then_requeues(tmp_path):
  proc, log = _job(tmp_path)
  proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends 300 s before the time limit
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  calls = standins.calls(log)
  assert any(c["argv"][0] == "srun" and c.get("signal") == "TERM" for c in calls)  # the tasks saved and exited
  assert [c["argv"] for c in calls if c["argv"][0] == "scontrol"] == [["scontrol", "requeue", "42"]]
  assert "requeued" in err


def test_slurm_sigterm_stops_the_tasks_without_a_requeue(tmp_path):
  proc, log = _job(tmp_path)
  proc.send_signal(signal.SIGTERM)
  proc.communicate(timeout=60)
  calls = standins.calls(log)
  assert proc.returncode == 1 and any(c.get("signal") == "TERM" for c in calls)
  assert not [c for c in calls if c["argv"][0] == "scontrol"]
