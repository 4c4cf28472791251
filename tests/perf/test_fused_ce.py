"""loss.fused_ce_chunk: the fused, chunked head + CE (custom VJP) equals autodiff of the plain CE within tolerance."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import plain_helpers as ph
from tessera.configs import defaults
from tessera.losses import fused_cross_entropy, next_token, registry


def data(n_b=2, t=13, d=16, v=40, dtype=jnp.float32, seed=0):
  ks = jax.random.split(jax.random.key(seed), 4)
  x_BxTxD = jax.random.normal(ks[0], (n_b, t, d)).astype(dtype)
  w_VxD = (jax.random.normal(ks[1], (v, d)) * 0.5).astype(dtype)
  targets_BxT = jax.random.randint(ks[2], (n_b, t), 0, v)
  mask_BxT = (jax.random.uniform(ks[3], (n_b, t)) > 0.2).astype(jnp.float32)
  return x_BxTxD, w_VxD, targets_BxT, mask_BxT


def plain(x_BxTxD, w_VxD, targets_BxT, mask_BxT):
  logits = jnp.einsum("btd,vd->btv", x_BxTxD, w_VxD, preferred_element_type=jnp.float32)
  return next_token.cross_entropy(logits, targets_BxT, mask_BxT)[0]


@pytest.mark.parametrize("chunk", [1, 5, 26, 64])  # 26 = all tokens in one chunk; 5, 64: padded last chunk
def test_fused_loss_and_grads_equal_autodiff_fp32(chunk):
  x, w, t, m = data()
  fused = lambda x, w: fused_cross_entropy.cross_entropy(x, w, t, m, chunk)[0]
  loss, (dx, dw) = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(x, w)
  want, (want_dx, want_dw) = jax.jit(jax.value_and_grad(lambda x, w: plain(x, w, t, m), argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(jax.jit(fused)(x, w), want, rtol=1e-6)  # forward only (eval): same loss


def test_fused_bf16_within_bf16_tolerance_and_dtypes():
  x, w, t, m = data(dtype=jnp.bfloat16)
  fused = lambda x, w: fused_cross_entropy.cross_entropy(x, w, t, m, 8)[0]
  loss, (dx, dw) = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(x, w)
  want, (want_dx, want_dw) = jax.jit(jax.value_and_grad(lambda x, w: plain(x, w, t, m), argnums=(0, 1)))(x, w)
  assert loss.dtype == jnp.float32 and dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  for got, ref in ((dx, want_dx), (dw, want_dw)):
    got, ref = np.asarray(got, np.float32), np.asarray(ref, np.float32)
    np.testing.assert_allclose(got, ref, atol=0.02 * np.abs(ref).max())


def loss_and_grads(cfg, chunk):
  config = defaults.base_config()
  config.loss.fused_ce_chunk = chunk
  loss_fn = registry.objective(config).loss_fn
  model = ph.tessera_model(cfg)
  graphdef, params = nnx.split(model, nnx.Param)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 17))
  batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]),
           "segment_ids": jnp.asarray(np.repeat([[1] * 10 + [2] * 6], 2, 0)),
           "positions": jnp.asarray(np.repeat([list(range(10)) + list(range(6))], 2, 0)),
           "loss_mask": jnp.asarray(np.repeat([[1.0] * 15 + [0.0]], 2, 0))}
  f = lambda p: loss_fn(nnx.merge(graphdef, p), batch, None)[0]
  return jax.jit(jax.value_and_grad(f))(nnx.to_pure_dict(params))


@pytest.mark.parametrize("tie,mlp", [(True, "gelu"), (False, "swiglu")])
def test_next_token_fused_equals_unfused_on_the_decoder(tie, mlp):
  cfg = ph.gelu_cfg(tie_embeddings=tie, mlp=mlp, n_kv_heads=2)
  loss, grads = loss_and_grads(cfg, 0)
  fused_loss, fused_grads = loss_and_grads(cfg, 7)
  np.testing.assert_allclose(fused_loss, loss, rtol=1e-6)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale), fused_grads, grads)


def test_fused_ce_chunk_is_checked_in_one_line():
  for bad in (-1, 2.5, True):
    config = defaults.base_config()
    with config.ignore_type():
      config.loss.fused_ce_chunk = bad
    with pytest.raises(ValueError, match="'loss.fused_ce_chunk'") as e:
      registry.check(config)
    assert "\n" not in str(e.value)
  config = defaults.base_config()
  config.loss.name = "zett"
  next_token.check(config)
  config.loss.fused_ce_chunk = 512
  with pytest.raises(ValueError, match="only loss.name='next_token'"):
    next_token.check(config)
