"""Real multi-process runs (launch/local.py, CPU collectives): 2 x 4 devices equals 1 x 8, checkpoints cross
process counts, each process reads its own rows, and a dead peer stops the others instead of hanging them."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import portpicker
import pytest

from tessera_testing import ROOT, TINY, run_cli, tb_scalars

pytestmark = pytest.mark.slow
STEPS = 6
ARGS = ("--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.checkpoint.every_steps=3",
        "--config.eval.every_steps=0", "--config.eval.batches=1", "--config.sample.max_new_tokens=2")


def launch(workdir, steps=STEPS):
  """2 processes x 4 fake devices through launch/local.py; returns (stdout, stderr)."""
  result = subprocess.run([sys.executable, "launch/local.py", "--processes", "2", "--devices-per-process", "4",
                           "--timeout", "600", "--", *TINY, "--workdir", str(workdir), f"--config.train.steps={steps}",
                           *ARGS], cwd=ROOT, capture_output=True, text=True, timeout=700)
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stdout, result.stderr


def single(workdir, steps=STEPS):
  return run_cli(*TINY, "--workdir", workdir, f"--config.train.steps={steps}", *ARGS, devices=8)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("scale")
  single(root / "one")
  _, stderr = launch(root / "two")
  return root, stderr


def _losses(workdir):
  return {step: values[-1] for step, values in tb_scalars(workdir, "train/loss").items()}


def _assert_close(got, want, steps):
  assert sorted(got) == list(steps), sorted(got)
  for step in steps:
    assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-5), (step, got[step], want[step])


def test_two_processes_give_the_losses_of_one(runs):
  root, _ = runs
  _assert_close(_losses(root / "two"), _losses(root / "one"), range(1, STEPS + 1))


def test_each_process_reads_its_own_rows_and_together_all(runs):
  _, stderr = runs
  found = dict(re.findall(r"\[p(\d)\] process \d of 2: 4 devices, rows (\d+:\d+) of each global batch of 8", stderr))
  assert found == {"0": "0:4", "1": "4:8"}, stderr[-3000:]
  rows = [set(range(*map(int, found[p].split(":")))) for p in ("0", "1")]
  assert not rows[0] & rows[1] and rows[0] | rows[1] == set(range(8))


def _truncated_copy(source, dest, keep_step):
  """The run as it was at `keep_step`: later checkpoints and all TensorBoard events and metrics removed (so only
  the resumed steps' losses are read back)."""
  shutil.copytree(source, dest)
  for path in (dest / "checkpoints").iterdir():
    if path.name.isdigit() and int(path.name) > keep_step:
      shutil.rmtree(path)
  shutil.rmtree(dest / "tb")
  (dest / "metrics.jsonl").unlink()


def test_checkpoint_of_two_processes_resumes_in_one_and_back(runs):
  root, _ = runs
  reference = _losses(root / "one")
  _truncated_copy(root / "two", root / "two_then_one", 3)
  result = single(root / "two_then_one")
  assert "resumed from step 3" in result.stderr
  _assert_close(_losses(root / "two_then_one"), reference, range(4, STEPS + 1))
  _truncated_copy(root / "one", root / "one_then_two", 3)
  _, stderr = launch(root / "one_then_two")
  assert "resumed from step 3" in stderr
  _assert_close(_losses(root / "one_then_two"), reference, range(4, STEPS + 1))


def test_dead_peer_stops_the_survivor_with_a_clear_error(tmp_path):
  """No launcher watchdog here: JAX's heartbeat (TESSERA_HEARTBEAT_TIMEOUT) must end the survivor by itself."""
  coordinator = f"127.0.0.1:{portpicker.pick_unused_port()}"
  procs = []
  for i in range(2):
    env = {**os.environ, "TESSERA_COORDINATOR": coordinator, "TESSERA_NUM_PROCESSES": "2",
           "TESSERA_PROCESS_ID": str(i), "TESSERA_HEARTBEAT_TIMEOUT": "5", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONUNBUFFERED": "1"}
    procs.append(subprocess.Popen([sys.executable, "-m", "tessera.trainer", *TINY, "--workdir", str(tmp_path / "w"),
                                   "--config.train.steps=400", *ARGS], cwd=ROOT, env=env, text=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
  survivor, victim = procs
  for line in survivor.stderr:
    if line.startswith("step 20/"):
      break
  victim.send_signal(signal.SIGKILL)
  killed = time.perf_counter()
  stderr = survivor.stderr.read()
  code = survivor.wait(timeout=120)
  victim.wait()
  assert code != 0 and time.perf_counter() - killed < 60
  assert "stopped sending heartbeats" in stderr and "1" in stderr.split("stopped sending heartbeats")[1][:10]
