"""Checkpoint integrity at the Checkpointer level: the 13 corruptions of issue 15 are each detected (the step is
moved to corrupt-<step>/ and restore falls back to the older one) or provably harmless (bit-identical restore)."""
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from corruption_kinds import KINDS
from tessera.trainer import checkpoint as ckpt_lib

CONFIG = ConfigDict(dict(every_steps=3, every_seconds=0.0, max_to_keep=3, keep_period=0, async_save=True))


def make_state(seed):
  """A small sharded state shaped like the trainer's: step, params, opt_state, rng and an extra subtree."""
  mesh = jax.make_mesh((jax.device_count(),), ("x",), axis_types=(AxisType.Auto,))
  rows, rep = NamedSharding(mesh, P("x")), NamedSharding(mesh, P())
  key = jax.random.key(seed)
  k1, k2, k3 = jax.random.split(key, 3)
  w = jax.random.normal(k1, (64, 256))
  return {
      "step": jax.device_put(jnp.int32(3 * seed), rep),
      "params": {"w": jax.device_put(w, rows), "b": jax.device_put(jax.random.normal(k2, (16,)), rep),
                 "emb": jax.device_put(jax.random.normal(k3, (32, 64)).astype(jnp.bfloat16), rows)},
      "opt_state": {"mu": jax.device_put(w * 0.1, rows), "count": jax.device_put(jnp.int32(seed), rep)},
      "rng": jax.device_put(jax.random.key_data(key), rep),
      "model_state": {"ema": jax.device_put(w * 0.5, rows)},
  }


def abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def assert_identical(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
  """A workdir with committed steps 3 and 6 (async saves), written once and copied per case."""
  workdir = tmp_path_factory.mktemp("template")
  ckpt = ckpt_lib.Checkpointer(workdir, CONFIG)
  states = {3: make_state(1), 6: make_state(2)}
  for step, state in states.items():
    ckpt.save(step, state, {"next_batch": step})
  ckpt.close()
  return workdir, states


def copy(template, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(template[0], workdir)
  return workdir


def test_roundtrip_is_verified_and_plain_orbax_reads_state(template, tmp_path):
  workdir, states = copy(template, tmp_path), template[1]
  ckpt = ckpt_lib.Checkpointer(workdir, CONFIG)
  step, state, position = ckpt.restore_latest(abstract(states[6]))
  assert (step, position) == (6, {"next_batch": 6})
  assert_identical(state, states[6])
  assert_identical(ckpt.restore_params(3, abstract(states[3]["params"])), states[3]["params"])
  import orbax.checkpoint as ocp
  assert ocp.CheckpointManager(workdir / "checkpoints").all_steps() == [3, 6]
  plain = ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / "6" / "state")
  assert_identical(plain["params"], states[6]["params"])


@pytest.mark.parametrize("kind", list(KINDS))
def test_corruption_detected_or_harmless(kind, template, tmp_path, capfd):
  workdir, states = copy(template, tmp_path), template[1]
  damaged = KINDS[kind](workdir / "checkpoints" / "6")
  ckpt = ckpt_lib.Checkpointer(workdir, CONFIG)
  step, state, position = ckpt.restore_latest(abstract(states[6]))
  err = capfd.readouterr().err
  assert_identical(state, states[step])
  assert position == {"next_batch": step}
  if step == 6:  # harmless: nothing reported, nothing moved
    assert "corrupt" not in err and (workdir / "checkpoints" / "6").is_dir()
    return
  assert step == 3
  lines = [line for line in err.splitlines() if "corrupt" in line]
  assert len(lines) == 1, err
  assert "step 6" in lines[0] and "checkpoints/6/" in lines[0] and "falling back to step 3" in lines[0]
  assert (workdir / "checkpoints" / "corrupt-6" / damaged.relative_to(workdir / "checkpoints" / "6")).exists()
  assert not (workdir / "checkpoints" / "6").exists()
  assert ckpt.all_steps() == [3] and ckpt_lib.latest_step(workdir) == 3
  ckpt.save(6, states[6], {"next_batch": 6})  # the replayed step saves again (Orbax forgot the moved one)
  ckpt.wait()
  assert ckpt.restore_latest(abstract(states[6]))[0] == 6
  ckpt.close()


def test_stray_directories_are_not_steps(template, tmp_path, capfd):
  workdir, states = copy(template, tmp_path), template[1]
  (workdir / "checkpoints" / "99").mkdir()
  (workdir / "checkpoints" / "12").mkdir()
  (workdir / "checkpoints" / "12" / "notes.txt").write_text("mine")
  assert ckpt_lib.latest_step(workdir) == 6
  ckpt = ckpt_lib.Checkpointer(workdir, CONFIG)
  assert ckpt.latest_step() == 6 and ckpt.all_steps() == [3, 6]
  err = capfd.readouterr().err
  assert "checkpoints/99 is not a committed Orbax checkpoint" in err and "ignored" in err
  assert ckpt.save(12, states[6], {"next_batch": 12})  # the stray 12 is moved aside, never deleted
  ckpt.close()
  assert (workdir / "checkpoints" / "stray-12" / "notes.txt").read_text() == "mine"
  assert ckpt_lib.latest_step(workdir) == 12 and (workdir / "checkpoints" / "99").is_dir()


def test_mismatch_is_not_corruption(template, tmp_path):
  workdir, states = copy(template, tmp_path), template[1]
  ckpt = ckpt_lib.Checkpointer(workdir, CONFIG)
  wrong = abstract(states[6])
  wrong["params"]["w"] = jax.ShapeDtypeStruct((64, 128), jnp.float32, sharding=wrong["params"]["w"].sharding)
  with pytest.raises(ckpt_lib.CheckpointMismatch, match="params/w.*shape"):
    ckpt.restore_latest(wrong)
  extra = {**abstract(states[6]), "frozen": {"teacher": jax.ShapeDtypeStruct((4,), jnp.float32)}}
  with pytest.raises(ckpt_lib.CheckpointMismatch, match="frozen/teacher"):
    ckpt.restore_latest(extra)
  assert ckpt.all_steps() == [3, 6]


def test_missing_digest_of_a_digested_step_is_corrupt(template, tmp_path, capfd):
  workdir, states = copy(template, tmp_path), template[1]
  shutil.rmtree(workdir / "checkpoints" / "6" / "digest")
  step, _, _ = ckpt_lib.Checkpointer(workdir, CONFIG).restore_latest(abstract(states[6]))
  assert step == 3 and "checkpoints/6/digest: missing" in capfd.readouterr().err


def test_optax_state_and_empty_subtrees_roundtrip(tmp_path):
  """Real optimizer states (tuples, namedtuples, masked nodes) and empty subtrees verify and fit."""
  import optax
  params = {"w": jnp.ones((4, 8)), "b": jnp.zeros((8,)), "emb": {"t": jnp.ones((3, 4))}}
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.masked(optax.adamw(1e-3), {"w": True, "b": False, "emb": {"t": True}}),
                   optax.inject_hyperparams(optax.sgd)(learning_rate=0.1))
  state = {"step": jnp.int32(1), "params": params, "opt_state": tx.init(params), "frozen": {}, "model_state": {}}
  ckpt = ckpt_lib.Checkpointer(tmp_path, CONFIG)
  ckpt.save(1, state, {"next_batch": 1})
  step, restored, _ = ckpt.restore_latest(abstract(state))
  assert step == 1 and jax.tree.structure(restored) == jax.tree.structure(state)
  assert_identical(restored, state)
  ckpt.close()
