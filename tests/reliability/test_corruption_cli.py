"""End to end through the CLI: a corrupted latest checkpoint is reported in one line, moved aside, and the run
resumes from the previous step with the same losses; a stray numeric directory is not a checkpoint."""
import json

import pytest

from corruption_kinds import KINDS
from tessera_testing import TINY, run_cli, tb_scalars


def losses(workdir):
  return {r["step"]: r["train/loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
          if "train/loss" in r}



def test_corrupt_latest_checkpoint_falls_back(tmp_path):
  workdir = tmp_path / "run"
  args = (*TINY, "--workdir", workdir, "--config.checkpoint.every_steps=3", "--config.eval.every_steps=0")
  run_cli(*args, "--config.train.steps=6")
  first = losses(workdir)
  damaged = KINDS["one bit flipped in data file 1"](workdir / "checkpoints" / "6")
  (workdir / "checkpoints" / "99").mkdir()  # a stray directory is ignored, not "already at step 99"

  result = run_cli(*args, "--config.train.steps=8")
  lines = [line for line in result.stderr.splitlines() if " is corrupt" in line]
  assert len(lines) == 1, result.stderr
  assert "step 6" in lines[0] and "checkpoints/6/" in lines[0] and "falling back to step 3" in lines[0]
  assert "resumed from step 3" in result.stderr
  assert "checkpoints/99 is not a committed Orbax checkpoint" in result.stderr
  assert (workdir / "checkpoints" / "corrupt-6" / damaged.relative_to(workdir / "checkpoints" / "6")).exists()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6", "8", "99"]
  second = losses(workdir)
  assert sorted(second) == list(range(1, 9))
  assert all(second[s] == first[s] for s in range(1, 5))  # step 4 replays bit for bit (5, 6: the lr schedule follows train.steps=8)
  assert sorted(tb_scalars(workdir, "train/loss")) == list(range(1, 9))
  assert all(len(v) == 1 for v in tb_scalars(workdir, "train/loss").values())
