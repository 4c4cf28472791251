"""STEM model: accounting (check 1), exact reduction to SwiGLU (2), token-only dependence (3), the edit
invariants (6) and host offload equal to the in-memory path."""
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stem_helpers import abstract, build, normal, run, tiny_cfg, tokens
from tessera.models import decoder, layers, stem


def _stored(model):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_accounting_matches_the_built_model_and_the_paper_formulas():
  cfg = tiny_cfg(vocab_size=256, d_model=64, d_ff=192, n_layers=4)
  d, F, V = 64, 192, 256
  dense_cfg = tiny_cfg(vocab_size=256, d_model=64, d_ff=192, n_layers=4, **{"stem.layers": []})
  dense = _stored(abstract(dense_cfg))
  assert dense == decoder.param_count(dense_cfg)["total"]
  counts = stem.accounting(cfg, seq_len=32)
  assert counts["params_stored"] == _stored(abstract(cfg)) == dense - 2 * d * F + 2 * V * F
  assert counts["params_total_paper"] == dense + 2 * V * F
  assert counts["params_active"] == dense - 2 * d * F
  assert counts["flops_per_token_paper"] == 2 * counts["params_active"]
  # Matmul-only forward FLOPs from the built shapes: 2 x every weight a token multiplies (no embedding gather,
  # no STEM table, no norm scales) = 2 x (active - input embedding - norms).
  flat = nnx.to_flat_state(nnx.state(abstract(cfg), nnx.Param))
  matmul = sum(math.prod(v.shape) for path, v in flat if path[-1] not in ("stem_table", "embed", "scale"))
  norms = (2 * cfg.n_layers + 1) * d
  assert 2 * matmul == 2 * (counts["params_active"] - V * d - norms)
  attention = 12 * cfg.n_layers * 32 * cfg.d_model
  assert counts["train_flops_per_token"] == 6 * matmul + attention


def test_accounting_reproduces_the_1b_numbers_without_allocating():
  cfg = tiny_cfg(vocab_size=128256, d_model=2048, d_ff=8192, n_layers=16, n_heads=32, n_kv_heads=8,
                 **{"stem.layers": [1, 4, 7, 10, 13]})
  counts = stem.accounting(cfg, seq_len=4096)
  dense = decoder.param_count(tiny_cfg(vocab_size=128256, d_model=2048, d_ff=8192, n_layers=16, n_heads=32,
                                       n_kv_heads=8))["total"]
  assert round(dense / 1e9, 3) == 1.498
  assert round(counts["params_total_paper"] / 1e9, 2) == 6.75
  assert counts["params_active"] == dense - 5 * 2048 * 8192 and round(counts["params_active"] / 1e9, 2) == 1.41
  assert round(counts["flops_per_token_paper"] / 1e9, 2) == 2.83 and round(2 * dense / 1e9, 2) == 3.00
  assert _stored(abstract(cfg)) == counts["params_stored"] == dense - 5 * 2048 * 8192 + 5 * 128256 * 8192


def test_layer_choice():
  def chosen(layers, n_layers=8):
    return stem.stem_layers(SimpleNamespace(n_layers=n_layers, stem=SimpleNamespace(layers=layers)))
  assert chosen(None, 4) == (1, 2, 3) and chosen("all", 4) == (0, 1, 2, 3)
  assert chosen("1/2") == (1, 3, 5, 7) and chosen("1/3") == (1, 4, 7) and chosen([3, 1]) == (1, 3)
  with pytest.raises(ValueError, match="outside"):
    chosen([8])


def _ffn(cfg, seed=0):
  with nnx.use_eager_sharding(False):
    return stem.StemFFN.from_config(cfg, nnx.Rngs(seed)), layers.SwiGLU(cfg, nnx.Rngs(seed + 1))


def test_table_of_a_dense_up_projection_reproduces_swiglu():
  cfg = tiny_cfg()
  ffn, dense = _ffn(cfg)
  dense.gate[...], dense.down[...] = ffn.gate[...], ffn.down[...]
  c_VxD = normal((cfg.vocab_size, cfg.d_model), seed=1)
  ffn.stem_table[...] = c_VxD @ dense.up[...]  # U[t] = W_up c_t
  ids_BxT = tokens((2, 8))
  x_BxTxD = normal((2, 8, cfg.d_model), seed=2)
  # gate sees x, the up branch sees c_t:
  expected = (jax.nn.silu(x_BxTxD @ ffn.gate[...]) * (c_VxD[ids_BxT] @ dense.up[...])) @ ffn.down[...]
  np.testing.assert_allclose(ffn(x_BxTxD, ids_BxT), expected, atol=1e-6, rtol=1e-6)
  # where the FFN input is c_t itself, STEM is exactly the dense layer
  np.testing.assert_allclose(ffn(c_VxD[ids_BxT], ids_BxT), dense(c_VxD[ids_BxT]), atol=1e-6, rtol=1e-6)


def test_output_depends_on_the_token_only_through_the_table():
  cfg = tiny_cfg()
  ffn, _ = _ffn(cfg)
  ids_BxT = jnp.asarray([[3, 7, 3, 9, 7, 3]], jnp.int32)
  ffn.gate[...] = jnp.zeros_like(ffn.gate[...])
  assert float(jnp.abs(ffn(normal((1, 6, cfg.d_model)), ids_BxT)).max()) == 0.0  # silu(0) = 0
  ffn, _ = _ffn(cfg, seed=1)
  x_BxTxD = jnp.broadcast_to(normal((1, 1, cfg.d_model)), (1, 6, cfg.d_model))  # constant gate input
  y = np.asarray(ffn(x_BxTxD, ids_BxT))[0]
  assert (y[0] == y[2]).all() and (y[0] == y[5]).all() and (y[1] == y[4]).all()
  assert not np.allclose(y[0], y[1])


def test_edit_invariants():
  model = build(tiny_cfg())
  tokens_BxT = tokens((2, 12))
  plain = np.asarray(run(model, tokens_BxT))
  assert (np.asarray(run(model, tokens_BxT, stem_ids_BxT=tokens_BxT)) == plain).all()
  p = 6
  edited_BxT = tokens_BxT.at[:, p].set((tokens_BxT[:, p] + 5) % 64)
  after = np.asarray(run(model, tokens_BxT, stem_ids_BxT=edited_BxT))
  assert (after[:, :p] == plain[:, :p]).all()
  assert (np.abs(after[:, p:] - plain[:, p:]).max(axis=-1) > 0).all()
  # mean-row mode with one target id == replace mode
  ids_BxTx1 = np.zeros((2, 12, 1), np.int32)
  weights_BxTx1 = np.zeros((2, 12, 1), np.float32)
  ids_BxTx1[:, p, 0] = edited_BxT[:, p]
  weights_BxTx1[:, p, 0] = 1.0
  mean = np.asarray(run(model, tokens_BxT, override=(jnp.asarray(ids_BxTx1), jnp.asarray(weights_BxTx1))))
  np.testing.assert_allclose(mean, after, atol=1e-6, rtol=0)


def test_dense_twin_has_the_same_backbone_and_no_tables():
  flat = dict(nnx.to_flat_state(nnx.state(abstract(tiny_cfg(**{"stem.layers": []})), nnx.Param)))
  stem_flat = dict(nnx.to_flat_state(nnx.state(abstract(tiny_cfg()), nnx.Param)))
  assert ("blocks", 1, "mlp", "up") in flat and ("blocks", 1, "mlp", "stem_table") in stem_flat
  assert set(flat) - set(stem_flat) == {("blocks", 1, "mlp", "up"), ("blocks", 3, "mlp", "up")}


def test_offload_equals_the_in_memory_path():
  cfg, off_cfg = tiny_cfg(), tiny_cfg(**{"stem.offload": True})
  model, offloaded = build(cfg), build(off_cfg)
  tokens_BxT = tokens((2, 12))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  off_graphdef, _, off_rest = nnx.split(offloaded, nnx.Param, ...)

  @jax.jit
  def loss_and_grads(params):
    def loss(params, graphdef, rest):
      return jnp.mean(nnx.merge(graphdef, params, rest)(tokens_BxT) ** 2)
    return (jax.value_and_grad(loss)(params, graphdef, rest), jax.value_and_grad(loss)(params, off_graphdef, off_rest))

  (loss, grads), (off_loss, off_grads) = loss_and_grads(params)
  assert float(loss) == float(off_loss)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), grads, off_grads)
