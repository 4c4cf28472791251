"""Sharded equals unsharded on 8 fake CPU devices; FSDP divides parameter and optimizer bytes by the mesh."""
import pytest

from tessera_testing import TINY, run_cli, run_json_script, tb_scalars


def test_2x2x2_mesh_matches_one_device(tmp_path):
  steps = ("--config.train.steps=5", "--config.eval.every_steps=0", "--config.sample.max_new_tokens=2")
  run_cli(*TINY, "--workdir", tmp_path / "one", *steps)
  run_cli(*TINY, "--workdir", tmp_path / "eight", *steps, "--config.mesh.data=2", "--config.mesh.fsdp=2",
          "--config.mesh.tensor=2", devices=8)
  one, eight = tb_scalars(tmp_path / "one", "train/loss"), tb_scalars(tmp_path / "eight", "train/loss")
  assert sorted(one) == sorted(eight) == [1, 2, 3, 4, 5]
  for step in one:
    assert eight[step][0] == pytest.approx(one[step][0], rel=1e-5, abs=1e-5)


_MEMORY = """
import json, jax
from tessera.trainer import cli, mesh as mesh_lib, state as state_lib, step as step_lib
from tessera.losses import registry
out = {}
for name, mesh in (("replicated", {"mesh.data": 8}), ("fsdp", {"mesh.data": 1, "mesh.fsdp": 8})):
  config, _ = cli.load_config("configs/lm.py:small", {**mesh, "model.vocab_size": 384})
  factory = state_lib.StateFactory(config, mesh_lib.make_mesh(config))
  step = step_lib.make_train_step(factory)
  b, t = config.train.batch_size, config.train.seq_len
  batch = {k: jax.ShapeDtypeStruct((b, t), "float32" if k == "loss_mask" else "int32")
           for k in ("inputs", "targets", "segment_ids", "positions", "loss_mask")}
  with factory.context():
    analysis = step.lower(factory.abstract_state(), batch).compile().memory_analysis()
  out[name] = analysis.argument_size_in_bytes - 5 * b * t * 4 // 8   # minus this device's batch shard
print(json.dumps(out))
"""


def test_fsdp_divides_state_bytes_per_device():
  sizes = run_json_script(_MEMORY, devices=8)
  assert sizes["fsdp"] <= 1.05 / 8 * sizes["replicated"], sizes


def test_resume_on_another_mesh_continues_the_same_run(trained_workdir, tmp_path):
  """Saved on 1 device at step 6, resumed on 8 devices (data=2, fsdp=2, tensor=2): steps 7..12 match."""
  import shutil
  workdir = tmp_path / "remesh"
  shutil.copytree(trained_workdir, workdir)
  shutil.rmtree(workdir / "checkpoints" / "12")
  shutil.rmtree(workdir / "tb")  # steps 1-6 come back from metrics.jsonl; 7-12 are the resumed run's
  run_cli(*TINY, "--workdir", workdir, "--config.train.steps=12", "--config.mesh.data=2", "--config.mesh.fsdp=2",
          "--config.mesh.tensor=2", "--config.profile.start_step=-1", devices=8)
  reference, resumed = tb_scalars(trained_workdir, "train/loss"), tb_scalars(workdir, "train/loss")
  assert sorted(resumed) == list(range(1, 13))
  for step in range(7, 13):
    assert resumed[step][0] == pytest.approx(reference[step][0], rel=1e-4, abs=1e-4), step
