"""model.attention_impl="xla_blocked": the query-blocked causal attention equals the XLA reference within float
tolerance (GQA, packed segments, a partial last block), and so do a decoder's loss and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import plain_helpers as ph
from tessera.models import attention, attention_blocked


@pytest.mark.parametrize("T,block,heads,kv", [(20, 8, 4, 2), (16, 16, 2, 2), (12, 5, 4, 1)])
def test_blocked_equals_reference(T, block, heads, kv):
  ks = jax.random.split(jax.random.key(T), 4)
  q = jax.random.normal(ks[0], (2, T, heads, 8))
  k, v, ct = (jax.random.normal(key, (2, T, kv if i < 2 else heads, 8)) for i, key in enumerate(ks[1:]))
  segment_ids_BxT = jnp.asarray(np.stack([np.arange(T) // 7, np.zeros(T, int)]))
  ref = lambda q, k, v: attention.dot_product_attention(q, k, v, causal=True, segment_ids_BxT=segment_ids_BxT)
  blocked = lambda q, k, v: attention_blocked.attention(q, k, v, segment_ids_BxT, block)
  out, vjp = jax.vjp(blocked, q, k, v)
  want, want_vjp = jax.vjp(ref, q, k, v)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  for got, ref_grad in zip(vjp(ct), want_vjp(ct)):
    np.testing.assert_allclose(got, ref_grad, rtol=1e-5, atol=1e-5)


def test_decoder_with_blocked_attention_matches_xla():
  cfg = ph.gelu_cfg(n_kv_heads=2)
  model = ph.tessera_model(cfg)
  blocked = ph.tessera_model(ph.gelu_cfg(n_kv_heads=2, attention_impl="xla_blocked"))
  nnx.update(blocked, nnx.state(model, nnx.Param))
  tokens_BxT = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 150)))

  def loss_and_grads(m):
    graphdef, params = nnx.split(m, nnx.Param)
    f = lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens_BxT)[..., :5] ** 2)
    return jax.jit(jax.value_and_grad(f))(nnx.to_pure_dict(params))
  loss, grads = loss_and_grads(model)
  blocked_loss, blocked_grads = loss_and_grads(blocked)
  np.testing.assert_allclose(blocked_loss, loss, rtol=1e-5)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale), blocked_grads, grads)
