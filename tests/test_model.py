"""Decoder LM: shapes, causality, packed segments, GQA, scan/remat equivalence, param counts, sharding names, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import ConfigDict

from tessera.models import attention, decoder, layers, registry

RULES = (("batch", ("data", "fsdp")), ("vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"),
         ("q_heads", "tensor"), ("kv_heads", "tensor"), ("head_dim", None), ("layers", None), ("norm", None))


def tiny_cfg(**overrides):
  cfg = ConfigDict(dict(
    name="decoder", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=0, d_ff=64,
    rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=True, dtype="float32", param_dtype="float32",
    remat="none", scan_layers=False, attention_impl="xla", init_std=0.1, init="normal"))
  cfg.update(overrides)
  return cfg


def build(cfg, seed=0):
  with nnx.use_eager_sharding(False):
    return registry.get("decoder")(cfg, nnx.Rngs(seed))


@jax.jit
def _forward(graphdef, state, tokens_BxT, segment_ids_BxT, positions_BxT):
  return nnx.merge(graphdef, state)(tokens_BxT, segment_ids_BxT=segment_ids_BxT, positions_BxT=positions_BxT)


def run(model, tokens_BxT, *, segment_ids_BxT=None, positions_BxT=None):
  """Jitted forward: one compile per model and shape instead of hundreds of eager op compiles."""
  return _forward(*nnx.split(model), tokens_BxT, segment_ids_BxT, positions_BxT)


def normal(shape, seed=0):
  """Test inputs from numpy: eager jax.random costs seconds of compile per new shape on a busy CPU."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def tokens(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 64, shape), jnp.int32)


def abstract(cfg):
  """The model's structure without running any initializer (fast: no per-shape init compiles)."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: registry.get("decoder")(cfg, nnx.Rngs(0)))


def with_params_of(src, dst):
  """Fills `dst` (unrolled or scanned, any param dtype) with the unrolled model `src`'s params; returns `dst`."""
  src_params = dict(nnx.to_flat_state(nnx.state(src, nnx.Param)))
  def value(path):
    if path[0] == "blocks" and not isinstance(dst.blocks, nnx.List):
      return jnp.stack([src_params[("blocks", i, *path[1:])][...] for i in range(len(src.blocks))])
    return src_params[path][...]
  flat = [(path, var.replace(value(path).astype(var.dtype)))
          for path, var in nnx.to_flat_state(nnx.state(dst, nnx.Param))]
  nnx.update(dst, nnx.from_flat_state(flat))
  return dst


def test_logits_shape_and_dtype():
  logits_BxTxV = run(build(tiny_cfg()), tokens((2, 8)))
  assert logits_BxTxV.shape == (2, 8, 64) and logits_BxTxV.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits_BxTxV)).all() and float(jnp.std(logits_BxTxV)) > 1e-3


def test_causal_future_token_does_not_change_past_logits():
  model = build(tiny_cfg())
  tokens_BxT = tokens((1, 8))
  changed_BxT = tokens_BxT.at[0, 5].set((tokens_BxT[0, 5] + 1) % 64)
  before, after = run(model, tokens_BxT), run(model, changed_BxT)
  np.testing.assert_allclose(before[:, :5], after[:, :5], atol=1e-6)
  assert float(jnp.abs(before[:, 5:] - after[:, 5:]).max()) > 1e-3


def test_packed_segments_match_documents_run_alone():
  model = build(tiny_cfg())
  doc1, doc2 = tokens((1, 3), seed=1), tokens((1, 3), seed=2)
  packed_BxT = jnp.concatenate([doc1, doc2, jnp.zeros((1, 2), jnp.int32)], axis=1)
  segment_ids_BxT = jnp.array([[1, 1, 1, 2, 2, 2, 0, 0]])
  positions_BxT = jnp.array([[0, 1, 2, 0, 1, 2, 0, 1]])
  packed = run(model, packed_BxT, segment_ids_BxT=segment_ids_BxT, positions_BxT=positions_BxT)
  np.testing.assert_allclose(packed[:, 0:3], run(model, doc1), atol=1e-5)
  np.testing.assert_allclose(packed[:, 3:6], run(model, doc2), atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads_and_jax_reference():
  q_BxTxHxD, k_BxSxKxD, v_BxSxKxD = normal((2, 6, 4, 8), 0), normal((2, 6, 2, 8), 1), normal((2, 6, 2, 8), 2)

  @jax.jit
  def gqa_mha_reference(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD):
    repeat = lambda x_BxSxKxD: jnp.repeat(x_BxSxKxD, 2, axis=2)
    return (attention.dot_product_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD),
            attention.dot_product_attention(q_BxTxHxD, repeat(k_BxSxKxD), repeat(v_BxSxKxD)),
            jax.nn.dot_product_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, is_causal=True, implementation="xla"))

  gqa, mha, reference = gqa_mha_reference(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD)
  np.testing.assert_allclose(gqa, mha, atol=1e-6)
  np.testing.assert_allclose(gqa, reference, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
  q_1x1x1xD, k_1x1x1xD = normal((1, 1, 1, 16), 0), normal((1, 1, 1, 16), 1)
  def score(q_pos, k_pos):
    q = layers.apply_rope(q_1x1x1xD, jnp.array([[q_pos]]), 10000.0)
    k = layers.apply_rope(k_1x1x1xD, jnp.array([[k_pos]]), 10000.0)
    return float(jnp.sum(q * k))
  np.testing.assert_allclose(score(5, 2), score(13, 10), rtol=1e-5)
  assert abs(score(5, 2) - score(5, 4)) > 1e-3


def test_scan_layers_equals_unrolled_given_same_params():
  unrolled = build(tiny_cfg())
  scanned = with_params_of(unrolled, abstract(tiny_cfg(scan_layers=True)))
  assert scanned.blocks.attn.q.shape == (2, 32, 4, 8)
  tokens_BxT = tokens((2, 8))
  np.testing.assert_allclose(run(scanned, tokens_BxT), run(unrolled, tokens_BxT), atol=1e-5)


def test_scanned_init_draws_each_layer_independently():
  q_LxDxHxE = build(tiny_cfg(scan_layers=True)).blocks.attn.q[...]
  assert q_LxDxHxE.shape == (2, 32, 4, 8)
  assert float(jnp.abs(q_LxDxHxE[0] - q_LxDxHxE[1]).max()) > 1e-2
  np.testing.assert_allclose(float(jnp.std(q_LxDxHxE)), 0.1, rtol=0.1)


def loss_and_grads(model, tokens_BxT):
  graphdef, params = nnx.split(model)
  def loss_fn(params):
    logits_BxTxV = nnx.merge(graphdef, params)(tokens_BxT[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, tokens_BxT[:, 1:]).mean()
  return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.mark.parametrize("remat,scan_layers", [("full", False), ("dots", True)])
def test_remat_gives_same_loss_and_gradients(remat, scan_layers):
  tokens_BxT = tokens((2, 9))
  model = build(tiny_cfg(scan_layers=scan_layers))
  remat_model = abstract(tiny_cfg(scan_layers=scan_layers, remat=remat))
  nnx.update(remat_model, nnx.state(model))
  loss, grads = loss_and_grads(model, tokens_BxT)
  remat_loss, remat_grads = loss_and_grads(remat_model, tokens_BxT)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), remat_grads, grads)
  assert float(optax.tree.norm(grads)) > 1e-3


@pytest.mark.parametrize("tie,scan_layers", [(True, False), (False, True)])
def test_param_count_matches_built_model(tie, scan_layers):
  cfg = tiny_cfg(tie_embeddings=tie, scan_layers=scan_layers)
  model = abstract(cfg)
  sizes = [x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
  embedding = model.embed.size + (0 if tie else model.unembed.size)
  counts = decoder.param_count(cfg)
  assert counts == {"total": sum(sizes), "embedding": embedding, "non_embedding": sum(sizes) - embedding}
  assert counts["total"] == (20_640 if tie else 22_688)


def test_train_flops_per_token_follows_palm_formula():
  cfg = tiny_cfg()
  matmuls = 2 * (32 * 8 * (2 * 4 + 2 * 2) + 3 * 32 * 64) + 32 * 64
  assert decoder.train_flops_per_token(cfg, 8) == 6 * matmuls + 12 * 2 * 8 * 32


def test_every_param_has_logical_axis_names():
  mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
    model = nnx.eval_shape(lambda: registry.get("decoder")(tiny_cfg(scan_layers=True, tie_embeddings=False),
                                                           nnx.Rngs(0)))
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  assert all(len(var.get_metadata()["out_sharding"]) == var.ndim for _, var in flat)
  names = {"/".join(map(str, path)): var.get_metadata()["out_sharding"] for path, var in flat}
  assert names["embed"] == ("vocab", "embed") and names["unembed"] == ("embed", "vocab")
  assert names["blocks/attn/q"] == ("layers", "embed", "q_heads", "head_dim")
  assert names["blocks/attn/k"] == ("layers", "embed", "kv_heads", "head_dim")
  assert names["blocks/attn/o"] == ("layers", "q_heads", "head_dim", "embed")
  assert names["blocks/mlp/down"] == ("layers", "mlp", "embed")
  assert names["blocks/attn_norm/scale"] == ("layers", "norm") and names["final_norm/scale"] == ("norm",)
  assert specs["blocks"]["mlp"]["gate"].get_value() == jax.sharding.PartitionSpec(None, "fsdp", "tensor")


def test_bf16_compute_stays_close_to_fp32():
  model32 = build(tiny_cfg())
  model16 = with_params_of(model32, abstract(tiny_cfg(dtype="bfloat16", param_dtype="bfloat16")))
  assert model16.blocks[0].mlp.up.dtype == jnp.bfloat16
  tokens_BxT = tokens((2, 8))
  logits32, logits16 = run(model32, tokens_BxT), run(model16, tokens_BxT)
  assert logits16.dtype == jnp.float32
  assert float(jnp.abs(logits16 - logits32).max()) < 0.05 * float(jnp.abs(logits32).max())
