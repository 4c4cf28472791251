"""loss.fused_ce_chunk through the trainer: bitwise resume, sharded (2x2x2 fake devices) equals one device, and the
same losses as the unfused head within float tolerance."""
import shutil

import pytest

from tessera_testing import TINY, run_cli, tb_scalars

FUSED = ("--config.loss.fused_ce_chunk=48", "--config.eval.every_steps=0", "--config.sample.max_new_tokens=1")


def test_fused_resume_is_bitwise_identical(tmp_path):
  whole = tmp_path / "whole"
  run_cli(*TINY, "--workdir", whole, *FUSED, "--config.train.steps=6", "--config.checkpoint.every_steps=3",
          "--config.checkpoint.async_save=False")
  resumed = tmp_path / "resumed"
  shutil.copytree(whole, resumed, ignore=shutil.ignore_patterns("tb", "metrics.jsonl", "summary.json"))
  shutil.rmtree(resumed / "checkpoints" / "6")
  run_cli(*TINY, "--workdir", resumed, *FUSED, "--config.train.steps=6", "--config.checkpoint.every_steps=3",
          "--config.checkpoint.async_save=False")
  a, b = tb_scalars(whole, "train/loss"), tb_scalars(resumed, "train/loss")
  assert sorted(b) == [4, 5, 6]
  assert all(b[s] == a[s] for s in b), (a, b)


@pytest.mark.slow  # ~1 min: three tiny runs, one on 8 fake devices
def test_fused_sharded_equals_one_device_and_unfused(tmp_path):
  steps = ("--config.train.steps=4",)
  run_cli(*TINY, "--workdir", tmp_path / "one", *FUSED, *steps)
  run_cli(*TINY, "--workdir", tmp_path / "eight", *FUSED, *steps, "--config.mesh.data=2", "--config.mesh.fsdp=2",
          "--config.mesh.tensor=2", devices=8)
  run_cli(*TINY, "--workdir", tmp_path / "unfused", *FUSED, *steps, "--config.loss.fused_ce_chunk=0")
  one, eight = tb_scalars(tmp_path / "one", "train/loss"), tb_scalars(tmp_path / "eight", "train/loss")
  unfused = tb_scalars(tmp_path / "unfused", "train/loss")
  assert sorted(one) == sorted(eight) == sorted(unfused) == [1, 2, 3, 4]
  for step in one:
    assert eight[step][0] == pytest.approx(one[step][0], rel=1e-5, abs=1e-5)
    assert unfused[step][0] == pytest.approx(one[step][0], rel=1e-5, abs=1e-5)
