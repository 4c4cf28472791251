"""A --workdir that holds somebody else's files is refused (exit 2, nothing touched); empty folders count as fresh."""
import hashlib
import json

import pytest

from tessera_testing import TINY, run_cli
from tessera.trainer import workdir as workdir_lib
from tessera.trainer.config_loader import ConfigError


def digest(folder):
  return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_users_own_config_and_summary_are_not_overwritten(tmp_path):
  workdir = tmp_path / "mine"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"mine": true}\n')
  (workdir / "summary.json").write_text('{"score": 1}\n')
  before = digest(workdir)
  result = run_cli(*TINY, "--workdir", workdir, "--config.train.steps=2", check=False)
  assert result.returncode == 2 and "is not a tessera run" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert digest(workdir) == before and sorted(p.name for p in workdir.iterdir()) == ["config.json", "summary.json"]


def test_empty_folders_are_fresh_and_a_file_is_not_a_workdir(tmp_path):
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  workdir_lib.check_fresh(tmp_path / "empty")
  workdir_lib.check_fresh(tmp_path / "missing")
  (tmp_path / "file").write_text("x")
  with pytest.raises(ConfigError, match="is a file"):
    workdir_lib.check_fresh(tmp_path / "file")


def test_a_run_killed_before_its_summary_finishes_on_rerun(tmp_path):
  workdir = tmp_path / "run"
  args = (*TINY, "--workdir", workdir, "--config.train.steps=4", "--config.checkpoint.every_steps=2")
  run_cli(*args)
  first = (workdir / "summary.json").read_text()
  (workdir / "summary.json").unlink()  # as if killed between the last checkpoint and the summary
  checkpoints = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  result = run_cli(*args)
  assert "already at step" not in result.stdout and "done: step 4" in result.stdout
  again = json.loads((workdir / "summary.json").read_text())
  assert again["step"] == 4 and again["train_loss"] == json.loads(first)["train_loss"]
  assert again["eval_loss"] == json.loads(first)["eval_loss"]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == checkpoints
  assert "already at step 4" in run_cli(*args).stdout
