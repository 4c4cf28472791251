"""A method written entirely inside tests/ (tests/methods/toy_method.py: a frozen base, a trained head, an EMA of
the head in model state updated by after_update) trains through the real CLI from another run's params
(init.workdir), resumes bit for bit after SIGKILL, and needs no change to tessera's trainer."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tessera_testing import ROOT, restore_states, run_cli, tb_scalars

CONFIG = "tests/methods/toy_config.py"
BASE_ONLY = "--config.init.map=['^base/=base/']"


def restore(workdir, step):
  """The saved state item as numpy, read with plain Orbax."""
  return restore_states((workdir, step))[0]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("toy") / "pretrain"
  run_cli("--config", f"{CONFIG}:pretrain", "--workdir", workdir, "--config.train.steps=4")
  return workdir


@pytest.fixture(scope="module")
def head_run(pretrained):
  workdir = pretrained.parent / "head"
  run_cli("--config", CONFIG, "--workdir", workdir, f"--config.init.workdir={pretrained}", BASE_ONLY)
  return workdir


def test_frozen_base_loaded_from_the_first_run_never_changes(pretrained, head_run):
  source, final = restore(pretrained, 4), restore(head_run, 8)
  for name in ("['base']['embed']", "['base']['mix']"):
    np.testing.assert_array_equal(final["['frozen']" + name], source["['params']" + name])
  assert not any("base" in k for k in final if k.startswith("['opt_state']")), "optimizer state for frozen params"
  assert not any(k.startswith("['params']['base']") for k in final)
  report = json.loads((head_run / "init.json").read_text())
  assert sorted(report["loaded"]) == ["base/embed", "base/mix"] and report["fresh"] == ["head"]
  assert report["unused_source"] == ["head"] and report["step"] == 4


def test_ema_model_state_is_updated_checkpointed_and_logged(head_run):
  first, final = restore(head_run, 4), restore(head_run, 8)
  ema, head = final["['model_state']['head_ema']"], final["['params']['head']"]
  assert not np.array_equal(ema, first["['model_state']['head_ema']"])
  assert not np.array_equal(ema, head)  # an average that lags the head
  gaps = tb_scalars(head_run, "train/ema_gap")
  assert sorted(gaps) == list(range(1, 9)) and all(v[0] > 0 for v in gaps.values())


def test_resume_after_sigkill_is_bitwise(pretrained, head_run, tmp_path):
  workdir = tmp_path / "killed"
  args = ["--config", CONFIG, "--workdir", str(workdir), f"--config.init.workdir={pretrained}", BASE_ONLY,
          "--config.train.log_every_steps=1"]
  proc = subprocess.Popen([sys.executable, "-m", "tessera.trainer", *args], cwd=ROOT, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=subprocess.PIPE,
                          stdout=subprocess.DEVNULL)
  for line in proc.stderr:
    if line.startswith("step 5/"):
      proc.send_signal(signal.SIGKILL)
      break
  proc.stderr.read()
  assert proc.wait(timeout=300) == -signal.SIGKILL
  run_cli(*args)
  resumed, reference = restore(workdir, 8), restore(head_run, 8)
  assert resumed.keys() == reference.keys()
  for key in reference:
    np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)
  losses, reference_losses = tb_scalars(workdir, "train/loss"), tb_scalars(head_run, "train/loss")
  assert sorted(losses) == list(range(1, 9))
  assert all(v == reference_losses[s][0] for s, values in losses.items() for v in values)


@pytest.mark.parametrize("overrides, message", [
    (["--config.model.d_model=16"], "has shape"),
    (["--config.init.map=['^nothing$=x']"], "no parameter of"),
    (["--config.init.strict=True", BASE_ONLY], "config key 'init.strict'"),
    (["--config.model.d_model=1"], "config key 'model.d_model': the toy needs"),
])
def test_bad_partial_init_is_one_line_exit_2_nothing_written(pretrained, tmp_path, overrides, message):
  workdir = tmp_path / "bad"
  result = run_cli("--config", CONFIG, "--workdir", workdir, f"--config.init.workdir={pretrained}", *overrides,
                   check=False)
  assert result.returncode == 2, result.stderr
  assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert not workdir.exists()


def test_trainer_does_not_know_the_toy_method():
  trainer = ROOT / "trainer"
  assert not [p for p in trainer.glob("*.py") if "toy" in p.read_text()]
