"""Multi-process decisions (issue 15): a SIGTERM to one process stops every process at the same step with the same
checkpoint saved; a dead peer ends the survivor within the heartbeat timeout + 10 s, its last line naming the dead
process. Real processes (2 x 2 fake CPU devices) joined through the environment launch/local.py sets."""
import os
import re
import signal
import subprocess
import sys
import time

import portpicker
import pytest

from tessera_testing import ROOT, TINY

HEARTBEAT = 5
ARGS = ("--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.checkpoint.every_steps=0",
        "--config.checkpoint.every_seconds=0.0", "--config.eval.every_steps=0", "--config.eval.batches=1",
        "--config.sample.max_new_tokens=2", "--config.train.steps=400")


def start(workdir, extra_env=None, extra_args=()):
  coordinator = f"127.0.0.1:{portpicker.pick_unused_port()}"
  procs = []
  for i in range(2):
    env = {**os.environ, "TESSERA_COORDINATOR": coordinator, "TESSERA_NUM_PROCESSES": "2",
           "TESSERA_PROCESS_ID": str(i), "TESSERA_HEARTBEAT_TIMEOUT": str(HEARTBEAT), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    procs.append(subprocess.Popen([sys.executable, "-m", "tessera.trainer", *TINY, "--workdir", str(workdir), *ARGS,
                                   *extra_args],
                                  cwd=ROOT, env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
  return procs


def wait_for_step(proc, step, seen):
  for line in proc.stderr:
    seen.append(line)
    match = re.match(r"step (\d+)/", line)
    if match and int(match.group(1)) >= step:
      return
  raise AssertionError("".join(seen[-30:]))


def committed_steps(workdir):
  folder = workdir / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(tmp_path):
  procs = start(tmp_path / "w")
  seen = []
  try:
    wait_for_step(procs[0], 20, seen)
    procs[1].send_signal(signal.SIGTERM)
    errs = ["".join(seen) + procs[0].stderr.read(), procs[1].stderr.read()]
    codes = [p.wait(timeout=120) for p in procs]
  finally:
    for p in procs:
      p.kill()
  stopped = [re.findall(r"error: stopped by (.*) at step (\d+); checkpoint saved", e) for e in errs]
  assert codes == [1, 1], errs
  assert stopped[0] and stopped[1], errs
  assert stopped[0][0][0] == "a signal to another process" and stopped[1][0][0] == "signal 15"
  step = int(stopped[0][0][1])
  assert int(stopped[1][0][1]) == step and committed_steps(tmp_path / "w") == [step]
  for e in errs:
    assert "Traceback" not in e and "Check failed" not in e, e[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("saves", [[], ["--config.checkpoint.every_steps=1"]], ids=["stepping", "saving_every_step"])
def test_dead_peer_ends_the_survivor_within_heartbeat_plus_10s_naming_it(tmp_path, saves):
  """Also while the survivor sits in Orbax's save barriers (every step saves): the heartbeat still ends it."""
  procs = start(tmp_path / "w", extra_args=saves)
  survivor, victim = procs
  seen = []
  try:
    wait_for_step(survivor, 20, seen)
    victim.send_signal(signal.SIGKILL)
    killed = time.perf_counter()
    stderr = survivor.stderr.read()
    code = survivor.wait(timeout=120)
    elapsed = time.perf_counter() - killed
  finally:
    for p in procs:
      p.kill()
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert code not in (0, None) and elapsed < HEARTBEAT + 10, (elapsed, stderr[-3000:])
  assert re.search(r"process 1\b", lines[-1]) and "died" in lines[-1], lines[-5:]


def test_launcher_last_line_names_the_dead_process(capsys):
  """launch/local.py: one process SIGKILLed, the other stopped; the launcher's verdict is the last stderr line."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("launch_local", ROOT / "launch" / "local.py")
  local = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(local)
  survivor = [sys.executable, "-c", "import sys, time; print('working', file=sys.stderr, flush=True); time.sleep(60)"]
  victim = [sys.executable, "-c", "import os, time; time.sleep(0.5); os.kill(os.getpid(), 9)"]
  began = time.perf_counter()
  code = local.supervise([survivor, victim], [dict(os.environ)] * 2, timeout=60, grace=2)
  lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert code == 137 and time.perf_counter() - began < 20
  assert lines[-1].startswith("launch/local.py: process 1 was killed by signal 9 (the first to fail)"), lines
