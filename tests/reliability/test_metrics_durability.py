"""Scalars survive SIGKILL: every step <= the newest committed checkpoint has its line in metrics.jsonl, and after
resume TensorBoard shows every step exactly once (events lost in tensorboardX's queue are rewritten)."""
import pathlib
import signal
import subprocess
import sys

from tessera_testing import ROOT, tb_scalars
from tessera.trainer import checkpoint as ckpt_lib
from tessera.trainer import metrics as metrics_lib

WORKER = pathlib.Path(__file__).parent / "metrics_worker.py"
STEPS = 15


def start(workdir):
  return subprocess.Popen([sys.executable, str(WORKER), str(workdir), str(STEPS)], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_after(workdir, marker):
  """Runs the worker until it prints `marker`, then SIGKILLs it; returns the committed step after the kill."""
  proc = start(workdir)
  for line in proc.stdout:
    if line.strip() == marker:
      break
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  latest = ckpt_lib.latest_step(workdir) or 0  # killed during the first async save: nothing committed yet
  logged = {r["step"] for r in metrics_lib.read_metrics(workdir)}
  assert set(range(1, latest + 1)) <= logged, (latest, sorted(logged))
  return latest


def test_sigkill_keeps_scalars_of_committed_steps(tmp_path):
  workdir = tmp_path / "run"
  committed = [kill_after(workdir, "saved 3"), kill_after(workdir, "saved 9"), kill_after(workdir, "saved 12")]
  assert committed[-1] >= 9
  proc = start(workdir)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0 and out.strip().endswith("done"), err[-2000:]
  assert "metrics: rewrote" in err  # the killed run's queued TensorBoard events were lost, and are back
  records = metrics_lib.read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # each once: replayed steps were dropped
  losses = tb_scalars(workdir, "train/loss")
  assert sorted(losses) == list(range(1, STEPS + 1))
  assert all(len(values) == 1 and abs(values[0] - 1.0 / s) < 1e-6 for s, values in losses.items()), losses


def test_resume_truncates_and_rewrites_lost_events(tmp_path, capfd):
  writer = metrics_lib.Writer(tmp_path)
  for step in range(1, 11):
    writer.scalars(step, {"loss": float(step), "bad": float("nan")}, "train")
  writer.sync()  # no tb flush/close: the events may sit in tensorboardX's queue, as at a SIGKILL
  (tmp_path / "metrics.jsonl").open("a").write('{"step": 11, "train/lo')  # torn last line
  resumed = metrics_lib.Writer(tmp_path, resume_step=6)
  resumed.scalars(7, {"loss": 70.0}, "train")
  resumed.close()
  assert [r["step"] for r in metrics_lib.read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6, 7]
  assert metrics_lib.read_metrics(tmp_path)[0]["train/bad"] == "nan"
  assert {s: v for s, v in tb_scalars(tmp_path, "train/loss").items()} == {
      **{s: [float(s)] for s in range(1, 7)}, 7: [70.0]}
