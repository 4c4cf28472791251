"""train.trainable: frozen params live in state["frozen"], are never differentiated, never change and have no
optimizer state; the compiled step skips their weight gradients (cost_analysis FLOPs)."""
import jax
import numpy as np

from tessera.trainer import cli, mesh as mesh_lib, state as state_lib, step as step_lib


def _factory(trainable):
  config, _ = cli.load_config("configs/lm.py:small", {"model.vocab_size": 384, "train.trainable": trainable})
  factory = state_lib.StateFactory(config, mesh_lib.make_mesh(config))
  return factory, step_lib.make_train_step(factory)


def _batch(seed, b=16, t=128):
  tokens = np.random.default_rng(seed).integers(0, 384, (b, t + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.zeros((b, t), np.int32),
          "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)), "loss_mask": np.ones((b, t), np.float32)}


def _flops(factory, train_step):
  with factory.context():
    analysis = train_step.lower(factory.abstract_state(), _batch(0)).compile().cost_analysis()
  return float((analysis[0] if isinstance(analysis, (list, tuple)) else analysis)["flops"])


def test_final_norm_only_costs_under_0_6_of_the_full_step_and_freezes_the_rest_bitwise():
  full, full_step = _factory(".*")
  norm_only, norm_step = _factory("^final_norm")
  assert _flops(norm_only, norm_step) < 0.6 * _flops(full, full_step)

  assert list(norm_only.abstract_params) == ["final_norm"]
  assert "blocks" in norm_only.abstract_frozen and "embed" in norm_only.abstract_frozen
  with norm_only.context():
    state = norm_only.init(0)
    frozen_before = jax.device_get(state["frozen"])
    norm_before = jax.device_get(state["params"])
    for i in range(5):
      state, metrics = norm_step(state, _batch(i))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["frozen"]), frozen_before)
  assert not np.array_equal(jax.device_get(state["params"])["final_norm"]["scale"], norm_before["final_norm"]["scale"])
  opt_leaves = [np.shape(x) for x in jax.tree.leaves(state["opt_state"])]
  assert all(shape in ((), (128,)) for shape in opt_leaves), opt_leaves  # step counts and the norm's moments only


def test_a_frozen_optimizer_group_means_frozen_params():
  config, _ = cli.load_config("configs/lm.py:small", {"model.vocab_size": 384,
                                                       "optim.groups": [{"pattern": "embed", "frozen": True}]})
  factory = state_lib.StateFactory(config, mesh_lib.make_mesh(config))
  assert list(factory.abstract_frozen) == ["embed"] and "embed" not in factory.abstract_params
