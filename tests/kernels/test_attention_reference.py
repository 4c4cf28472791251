"""The XLA reference against independent formulas: jax.nn attention, TRIM-KV's eager power stair, chunking."""

import jax
import jax.numpy as jnp
import numpy as np

from tessera.models import kernels


def qkv(seed, B=2, T=64, H=4, K=2, D=16):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(k1, (B, T, H, D)), jax.random.normal(k2, (B, T, K, D)),
          jax.random.normal(k3, (B, T, K, D)))


def test_zero_log_beta_is_plain_causal_attention():
  q, k, v = qkv(0)
  plain = kernels.attention(q, k, v, causal=True, implementation="xla")
  expected = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
  np.testing.assert_allclose(plain, expected, atol=2e-6)
  for mode in ("mul_logit", "add_bias"):
    gated = kernels.attention(q, k, v, log_retention=jnp.zeros((2, 2, 64)), retention_mode=mode,
                              implementation="xla")
    np.testing.assert_allclose(gated, plain, atol=1e-6)


def test_mul_logit_matches_trimkv_eager_formula():
  """trimkv.md 4: logits = beta_i^(t-i) * q.k / sqrt(d) below the diagonal, causal softmax; 4 heads, T = 128."""
  q, k, v = qkv(1, B=1, T=128, H=4, K=4, D=16)
  log_beta = jax.nn.log_sigmoid(jax.random.normal(jax.random.key(2), (1, 4, 128)) + 3.0)
  t = jnp.arange(128)
  power = jnp.clip(t[:, None] - t[None, :], 0)  # the "power stair", exponents clamped at 0
  decay = jnp.exp(log_beta[0][:, None, :] * power[None]) * jnp.tril(jnp.ones((1, 128, 128)))  # [H, T, S]
  logits = decay * jnp.einsum("thd,shd->hts", q[0], k[0], precision="highest") / 4.0
  logits = jnp.where(jnp.tril(jnp.ones((1, 128, 128), bool)), logits, -jnp.inf)
  eager = jnp.einsum("hts,shd->thd", jax.nn.softmax(logits, -1), v[0], precision="highest")
  ours = kernels.attention(q, k, v, log_retention=log_beta, implementation="xla")[0]
  np.testing.assert_allclose(ours, eager, atol=2e-6)


def test_query_chunking_changes_nothing():
  q, k, v = qkv(3, T=72)
  seg = (jnp.arange(72) >= 30).astype(jnp.int32)[None].repeat(2, 0)
  log_beta = -jax.random.uniform(jax.random.key(4), (2, 2, 72), maxval=0.1)

  def loss(q, k, v, log_beta, chunk):
    out = kernels.attention_reference(q, k, v, segment_ids=seg, log_retention=log_beta, q_chunk=chunk)
    return (out * jnp.sin(out)).sum()

  value_and_grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2, 3)), static_argnums=4)
  whole = value_and_grads(q, k, v, log_beta, 1024)
  chunked = value_and_grads(q, k, v, log_beta, 16)
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_rows_without_visible_keys_are_zero_with_finite_gradients():
  q, k, v = qkv(5, B=1, T=8, H=2, K=1)
  keep = jnp.ones((1, 8), jnp.int8).at[0, :3].set(0)  # causal rows 0-2 see only evicted keys
  attend = lambda q: kernels.attention(q, k, v, keep=keep, implementation="xla")
  out, vjp = jax.jit(lambda q: jax.vjp(attend, q))(q)
  np.testing.assert_array_equal(out[0, :3], 0.0)
  assert np.all(np.isfinite(np.asarray(vjp(jnp.ones_like(out))[0])))


def test_auto_uses_the_reference_on_cpu():
  if jax.default_backend() != "cpu":
    return
  q, k, v = qkv(6)
  np.testing.assert_array_equal(kernels.attention(q, k, v, implementation="auto"),
                                kernels.attention(q, k, v, implementation="xla"))
