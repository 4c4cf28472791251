"""End-to-end runs through the real CLI: outputs, resume, re-running, init-from, non-finite stop, eval/sample."""
import json
import os
import signal
import subprocess
import sys

import pytest

from tessera_testing import ROOT, TINY, run_cli, tb_scalars


def test_workdir_contract(trained_workdir):
  assert json.loads((trained_workdir / "config.json").read_text())["train"]["steps"] == 12
  summary = json.loads((trained_workdir / "summary.json").read_text())
  assert summary["step"] == 12
  for key in ("train_loss", "eval_loss", "tokens_per_second", "mfu"):
    assert summary[key] > 0, key
  for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_second", "train/mfu"):
    assert sorted(tb_scalars(trained_workdir, tag)) == list(range(1, 13)), tag
  assert sorted(tb_scalars(trained_workdir, "eval/loss")) == [5, 10, 12]
  losses = tb_scalars(trained_workdir, "train/loss")
  assert losses[12][0] < losses[1][0] - 0.5  # it learns
  steps = sorted(int(p.name) for p in (trained_workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [6, 12]
  assert list((trained_workdir / "profile").rglob("*.xplane.pb")), "profiler trace missing"


def test_plain_orbax_lists_steps_and_restores_state_as_arrays(trained_workdir):
  code = f"""
import jax, orbax.checkpoint as ocp
m = ocp.CheckpointManager({str(trained_workdir / 'checkpoints')!r})
print(m.all_steps())
state = ocp.PyTreeCheckpointer().restore({str(trained_workdir / 'checkpoints' / '12' / 'state')!r})
print(int(state['step']), sorted(set(type(x).__name__ for x in jax.tree.leaves(state['params']))))
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
  assert out[0] == "[6, 12]"
  assert out[1] == "12 ['ArrayImpl']"


def test_rerun_of_finished_run_changes_nothing(trained_workdir):
  before = {p: p.stat().st_mtime_ns for p in trained_workdir.rglob("*")}
  result = run_cli(*TINY, "--workdir", trained_workdir, "--config.train.steps=12")
  assert "already at step 12" in result.stdout
  assert {p: p.stat().st_mtime_ns for p in trained_workdir.rglob("*")} == before


def test_shape_change_on_resume_exits_2_and_writes_nothing(trained_workdir):
  before = {p: p.stat().st_mtime_ns for p in trained_workdir.rglob("*")}
  result = run_cli(*TINY, "--workdir", trained_workdir, "--config.train.steps=20", "--config.model.d_ff=128",
                   check=False)
  assert result.returncode == 2
  assert result.stderr.strip().startswith("error: config key 'model.d_ff' changed from 256 to 128")
  assert {p: p.stat().st_mtime_ns for p in trained_workdir.rglob("*")} == before


def test_eval_and_sample_on_a_workdir(trained_workdir):
  summary = json.loads((trained_workdir / "summary.json").read_text())
  out = json.loads(run_cli("eval", "--workdir", trained_workdir).stdout)
  assert out["step"] == 12 and out["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-5)
  sample = run_cli("sample", "--workdir", trained_workdir, "--prompt", "import ", "--max-new-tokens", "5").stdout
  assert sample.startswith("import ")
  missing = run_cli("eval", "--workdir", trained_workdir / "nope", check=False)
  assert missing.returncode == 2 and "config.json not found" in missing.stderr


def test_resume_with_more_steps_and_new_lr_logs_the_change(trained_workdir, tmp_path):
  import shutil
  workdir = tmp_path / "more"
  shutil.copytree(trained_workdir, workdir)
  result = run_cli(*TINY, "--workdir", workdir, "--config.train.steps=14", "--config.optim.lr=1e-3")
  assert "resumed from step 12" in result.stderr and "changed optim.lr: 0.003 -> 0.001" in result.stderr
  assert sorted(tb_scalars(workdir, "train/loss")) == list(range(1, 15))
  assert json.loads((workdir / "config.json").read_text())["optim"]["lr"] == 1e-3


def test_init_from_starts_at_step_0_and_is_refused_over_checkpoints(trained_workdir, tmp_path):
  workdir = tmp_path / "finetune"
  run_cli(*TINY, "--workdir", workdir, "--init-from", trained_workdir, "--config.train.steps=2")
  losses = tb_scalars(workdir, "train/loss")
  assert sorted(losses) == [1, 2]
  assert losses[1][0] < tb_scalars(trained_workdir, "train/loss")[1][0] - 0.5  # starts from trained params
  refused = run_cli(*TINY, "--workdir", workdir, "--init-from", trained_workdir, "--config.train.steps=4",
                    check=False)
  assert refused.returncode == 2 and "already has checkpoints" in refused.stderr


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path):
  workdir = tmp_path / "nan"
  result = run_cli(*TINY, "--workdir", workdir, "--config.optim.lr=1e30", "--config.optim.warmup_steps=0",
                   "--config.optim.clip=0.0", "--config.checkpoint.every_steps=1", check=False)
  assert result.returncode == 1
  assert "non-finite loss" in result.stderr
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  bad_step = int(result.stderr.split(" at step ")[1].split(";")[0])
  assert saved and max(saved) < bad_step
  assert f"last good checkpoint: step {max(saved)}" in result.stderr


def _interrupt(workdir, sig, after_step, steps=12):
  """Start a run, send `sig` once it logged `after_step`, wait; returns the exit code."""
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  proc = subprocess.Popen([sys.executable, "-m", "tessera.trainer", *TINY, "--workdir", str(workdir),
                           f"--config.train.steps={steps}", "--config.checkpoint.every_steps=3",
                           "--config.train.log_every_steps=1"],
                          cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  for line in proc.stderr:
    if line.startswith(f"step {after_step}/"):
      proc.send_signal(sig)
      break
  proc.stderr.read()
  return proc.wait(timeout=300)


@pytest.mark.parametrize("sig, after_step", [(signal.SIGKILL, 7), (signal.SIGTERM, 5)])
def test_resume_after_kill_is_bitwise_identical(trained_workdir, tmp_path, sig, after_step):
  workdir = tmp_path / "killed"
  code = _interrupt(workdir, sig, after_step)
  assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 1)
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and max(saved) < 12
  run_cli(*TINY, "--workdir", workdir, "--config.train.steps=12")
  reference = tb_scalars(trained_workdir, "train/loss")
  resumed = tb_scalars(workdir, "train/loss")
  assert sorted(resumed) == list(range(1, 13))
  for step, values in resumed.items():
    assert all(v == reference[step][0] for v in values), (step, values, reference[step])


def test_sweep_runs_every_point_in_its_own_folder(tmp_path):
  run_cli(*TINY, "--sweep", "--workdir", tmp_path, "--config.train.steps=2", "--config.sample.max_new_tokens=1")
  folders = sorted(p.name for p in tmp_path.iterdir())
  assert folders == ["optim.lr=0.001,seed=0", "optim.lr=0.001,seed=1", "optim.lr=0.003,seed=0",
                     "optim.lr=0.003,seed=1"]
  configs = [json.loads((tmp_path / f / "config.json").read_text()) for f in folders]
  assert [(c["optim"]["lr"], c["seed"]) for c in configs] == [(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)]
  assert all(json.loads((tmp_path / f / "summary.json").read_text())["step"] == 2 for f in folders)


def test_microbatch_accumulation_equals_one_big_batch(tmp_path):
  steps = ("--config.train.steps=3", "--config.eval.every_steps=0", "--config.sample.max_new_tokens=1")
  run_cli(*TINY, "--workdir", tmp_path / "one", *steps)
  run_cli(*TINY, "--workdir", tmp_path / "four", *steps, "--config.train.microbatches=4")
  one, four = tb_scalars(tmp_path / "one", "train/loss"), tb_scalars(tmp_path / "four", "train/loss")
  for step in (1, 2, 3):
    assert four[step][0] == pytest.approx(one[step][0], rel=1e-5, abs=1e-5), step
  grad_one, grad_four = tb_scalars(tmp_path / "one", "train/grad_norm"), tb_scalars(tmp_path / "four", "train/grad_norm")
  assert grad_four[1][0] == pytest.approx(grad_one[1][0], rel=1e-4)
