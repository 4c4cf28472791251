"""STEM optimizer: gradient-row sparsity and dense AdamW decaying absent rows (check 4), separate per-group
clipping (5), and the sparse-row update (`optim.stem_update=sparse_rows`) alone and in the jitted train step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from stem_helpers import build, sparse_rows_config, tiny_cfg, tokens, train_steps
from tessera import models  # noqa: F401  (registers the sparse-row update)
from tessera.configs import defaults, stem as stem_config
from tessera.trainer import optim

TABLE = ("blocks", 1, "mlp", "stem_table")


def optim_cfg(**overrides):
  """A whole config (optim.build reads train.steps and the STEM shorthand) with these optim overrides."""
  c = stem_config.add_keys(defaults.base_config())
  c.train.steps = 10
  c.optim.update(dict(lr=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.1, clip=1.0,
                      groups=[{"pattern": "stem_table"}]))
  c.optim.update(overrides)
  return c


def grads_of_tiny_model(tokens_BxT):
  model = build(tiny_cfg())
  graphdef, params = nnx.split(model, nnx.Param)

  @jax.jit
  def grads(params):
    return jax.grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens_BxT) ** 2))(params)
  params = nnx.to_pure_dict(params)
  return params, grads(params)


def _table(tree):
  return tree["blocks"][1]["mlp"]["stem_table"]


def test_table_gradient_rows_only_for_batch_ids_and_dense_adamw_decays_the_rest():
  tokens_BxT = tokens((2, 8), vocab=20)  # ids < 20 of 64
  params, grads = grads_of_tiny_model(tokens_BxT)
  present = np.zeros(64, bool)
  present[np.asarray(tokens_BxT).ravel()] = True
  row_norms = np.abs(np.asarray(_table(grads))).sum(axis=1)
  assert (row_norms[~present] == 0).all() and (row_norms[present] > 0).all()

  c = optim_cfg()
  o = c.optim
  tx, _, _, _ = optim.build(c, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  old, new = np.asarray(_table(params)), np.asarray(_table(optax.apply_updates(params, updates)))
  np.testing.assert_allclose(new[~present], old[~present] - o.lr * o.weight_decay * old[~present], rtol=1e-6)
  assert not np.allclose(new[present], old[present] - o.lr * o.weight_decay * old[present])


def test_each_group_clips_its_own_norm():
  params = {"w": jnp.ones((4, 4)), "stem_table": jnp.ones((8, 4))}
  grads = {"w": jnp.full((4, 4), 0.5 / 4), "stem_table": jnp.full((8, 4), 100.0 / np.sqrt(32))}  # norms 0.5, 100
  tx, _, labels, _ = optim.build(optim_cfg(clip=1.0), params)
  _, state = tx.update(grads, tx.init(params), params)
  mu = {k: state.inner_states[labels[k]].inner_state[1].mu[k] for k in params}  # (clip, adam, ...) -> adam mu
  np.testing.assert_allclose(mu["w"], 0.1 * grads["w"], rtol=1e-6)  # backbone: unclipped
  np.testing.assert_allclose(mu["stem_table"], 0.1 * grads["stem_table"] / 100.0, rtol=1e-5)  # table: to norm 1
  norms = optim.group_grad_norms(grads, labels, ["default", "group0"])
  assert np.isclose(norms["default"], 0.5) and np.isclose(norms["group0"], 100.0)


def test_sparse_rows_first_update_equals_dense_adam_on_batch_rows_and_leaves_other_rows():
  tokens_BxT = tokens((2, 8), vocab=20)
  params, grads = grads_of_tiny_model(tokens_BxT)
  unique = jnp.unique(tokens_BxT, size=64, fill_value=64)
  present = np.zeros(64, bool)
  present[np.asarray(tokens_BxT).ravel()] = True
  dense_tx, _, _, _ = optim.build(optim_cfg(), params)
  sparse_tx, _, _, updates = optim.build(optim_cfg(stem_update="sparse_rows"), params)
  assert updates == {"default": "adamw", "group0": "sparse_rows"}
  dense_updates, _ = jax.jit(dense_tx.update)(grads, dense_tx.init(params), params)
  sparse_state = sparse_tx.init(params)
  step = jax.jit(lambda g, s, p: sparse_tx.update(g, s, p, stem_row_ids=unique))
  sparse_updates, sparse_state = step(grads, sparse_state, params)
  dense_new = optax.apply_updates(params, dense_updates)
  sparse_new = optax.apply_updates(params, sparse_updates)
  old = np.asarray(_table(params))
  assert (np.asarray(_table(sparse_new))[~present] == old[~present]).all()  # untouched: no decay
  np.testing.assert_allclose(np.asarray(_table(sparse_new))[present], np.asarray(_table(dense_new))[present],
                             rtol=1e-6, atol=1e-7)
  jax.tree.map(np.testing.assert_array_equal, {k: v for k, v in sparse_new.items() if k != "blocks"},
               {k: v for k, v in dense_new.items() if k != "blocks"})  # the backbone keeps dense AdamW
  row_count = sparse_state.inner_states["group0"].inner_state[1]["row_count"]
  counts = np.asarray(_table(row_count))
  assert (counts[present] == 1).all() and (counts[~present] == 0).all()


def test_sparse_rows_train_step_runs_and_learns():
  initial_params, state, losses, metrics, inputs = train_steps(sparse_rows_config(4))
  table_before = np.asarray(_table(initial_params))
  present = np.zeros(64, bool)
  present[np.asarray(inputs).ravel()] = True
  table_after = np.asarray(_table(state["params"]))
  assert (table_after[~present] == table_before[~present]).all()
  assert (table_after[present] != table_before[present]).any()
  assert losses[-1] < losses[0] and "grad_norm/group0" in metrics


def test_sparse_rows_step_needs_a_fraction_of_the_dense_gradient_steps_temporaries():
  """The row step differentiates w.r.t. the batch's gathered rows (no [V, F] gradient); its compiled temporaries
  (measured 4.4 MB: the in-place row writes of two tables, their moments) are under a third of the step that builds
  dense table gradients (14.3 MB; microbatches=2 takes that step)."""
  from tessera.trainer import mesh as mesh_lib, state as state_lib, step as step_lib
  temps = {}
  for name, microbatches in (("rows", 1), ("dense_gradient", 2)):
    c = sparse_rows_config(1)
    c.model.vocab_size = 8192
    c.train.microbatches = microbatches
    factory = state_lib.StateFactory(c, mesh_lib.make_mesh(c))
    assert (factory.variant is not None) == (name == "rows")
    batch = {k: jax.ShapeDtypeStruct((2, 8), np.float32 if k == "loss_mask" else np.int32)
             for k in ("inputs", "targets", "segment_ids", "positions", "loss_mask")}
    with factory.context():
      compiled = step_lib.make_train_step(factory).lower(factory.abstract_state(), batch).compile()
    temps[name] = compiled.memory_analysis().temp_size_in_bytes
  assert temps["rows"] < temps["dense_gradient"] / 3, temps
