"""Split-K decode kernel vs the XLA reference (interpret mode on CPU, compiled on GPU): 1-16 queries over a cache
with per-head positions, keep masks and the optional retention term; the split combine; the dispatch."""

import dataclasses
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tessera.models import kernels
from tessera.models.kernels.attention_decode import combine_splits, decode_attention
from tessera.models.kernels.backend import MASK_VALUE

from test_attention_kernel import relative_error


@dataclasses.dataclass(frozen=True)
class Cache:
  dtype: str = "float32"
  B: int = 2
  T: int = 1
  S: int = 300
  H: int = 8
  K: int = 2
  D: int = 32
  evicted: float = 0.3  # fraction of cache slots with keep = 0 (positions then skip the evicted tokens' slots)
  retention: str | None = None
  block_kv: int = 32
  splits: int = 4
  skip_full_masks: bool = False

  def __str__(self):
    return (f"{self.dtype}-B{self.B}T{self.T}S{self.S}H{self.H}K{self.K}D{self.D}-ev{self.evicted}-{self.retention}"
            f"-bk{self.block_kv}x{self.splits}-full{int(self.skip_full_masks)}")


def make_cache(c):
  """Per-head sorted, non-contiguous cache positions (a compacted cache); queries after the newest slot."""
  keys = iter(jax.random.split(jax.random.key(zlib.crc32(str(c).encode())), 8))
  dtype = jnp.dtype(c.dtype)
  q = jax.random.normal(next(keys), (c.B, c.T, c.H, c.D)).astype(dtype)
  k = jax.random.normal(next(keys), (c.B, c.S, c.K, c.D)).astype(dtype)
  v = jax.random.normal(next(keys), (c.B, c.S, c.K, c.D)).astype(dtype)
  spread = 2 if c.evicted else 1
  scores = jax.random.uniform(next(keys), (c.B, c.K, spread * c.S))
  kv_pos = jnp.sort(jnp.argsort(scores, axis=-1)[..., :c.S], axis=-1).astype(jnp.int32)
  kwargs = dict(kv_positions=kv_pos, q_positions=jnp.broadcast_to(spread * c.S + jnp.arange(c.T, dtype=jnp.int32),
                                                                  (c.B, c.T)))
  if c.evicted:
    kwargs["keep"] = (jax.random.uniform(next(keys), (c.B, c.K, c.S)) >= c.evicted).astype(jnp.int8)
  if c.retention:
    kwargs.update(log_retention=-jax.random.uniform(next(keys), (c.B, c.K, c.S), maxval=0.01),
                  retention_mode=c.retention)
  return q, k, v, kwargs


def check_against_reference(c):
  q, k, v, kwargs = make_cache(c)
  mode = kwargs.pop("retention_mode", "mul_logit")  # static: closed over, the arrays are jit arguments
  ours = jax.jit(lambda q, k, v, kw: decode_attention(q, k, v, block_kv=c.block_kv, splits=c.splits,
                                                      skip_full_masks=c.skip_full_masks, retention_mode=mode,
                                                      **kw))(q, k, v, kwargs)
  ref = jax.jit(lambda q, k, v, kw: kernels.attention_reference(q, k, v, retention_mode=mode, **kw))(
      *(x.astype(jnp.float32) for x in (q, k, v)), kwargs)
  assert ours.dtype == q.dtype and ours.shape == q.shape
  tol = 1e-6 if c.dtype == "float32" else (2e-2 if c.retention else 1e-2)
  assert relative_error(ours, ref) <= tol


CASES = [
    Cache(retention="mul_logit"),  # single token, GQA 4, 30% evicted, S not a multiple of the chunks
    Cache(T=4, H=4, K=4, S=200, retention="add_bias", block_kv=16, splits=16),  # GQA 1, more splits than data
    Cache("bfloat16", T=16, H=4, K=1, S=256, D=64, evicted=0.0, skip_full_masks=True),  # full blocks, 64 rows
]


@pytest.mark.parametrize("c", CASES, ids=str)
def test_matches_reference(c):
  check_against_reference(c)


@pytest.mark.slow
@pytest.mark.parametrize("c", [
    Cache(T=1, S=8192, H=32, K=8, D=64, retention="mul_logit", block_kv=128, splits=16, skip_full_masks=True),
    Cache("bfloat16", T=16, S=8192, H=8, K=2, D=128, evicted=0.5, block_kv=128, splits=16),
    Cache(T=3, S=4000, H=6, K=3, retention="add_bias", evicted=0.0, block_kv=64, splits=8, skip_full_masks=True),
], ids=str)
def test_long_caches_match_reference(c):
  check_against_reference(c)


def test_gradients_follow_the_reference():
  """Decode is inference, but the path stays differentiable (custom_vjp through the reference)."""
  c = Cache(T=2, S=100, retention="mul_logit")
  q, k, v, kwargs = make_cache(c)
  log_beta = kwargs.pop("log_retention")
  w = jax.random.normal(jax.random.key(3), q.shape)
  loss = lambda fn: lambda q, k, v, lb: (fn(q, k, v, log_retention=lb, **kwargs) * w).sum()
  ours = jax.jit(jax.grad(loss(lambda *a, **kw: decode_attention(*a, block_kv=32, splits=4, **kw)),
                          (0, 1, 2, 3)))(q, k, v, log_beta)
  ref = jax.jit(jax.grad(loss(kernels.attention_reference), (0, 1, 2, 3)))(q, k, v, log_beta)
  for g, g_ref in zip(ours, ref):
    assert relative_error(g, g_ref) <= 5e-6


def test_combine_weights_splits_and_zeroes_empty_rows():
  """Two splits that saw the same keys combine to the same output as one; rows no split saw give 0."""
  acc = jax.random.normal(jax.random.key(0), (1, 1, 1, 3, 4))
  m = jnp.array([[[[0.5, -1.0, MASK_VALUE]]]])  # the third row never saw a key: m stayed at its initial value
  l = jnp.array([[[[2.0, 1.5, 0.0]]]])
  one = combine_splits(acc, m, l)
  two = combine_splits(jnp.concatenate([acc / 2, acc / 2], axis=2), jnp.concatenate([m, m], axis=2),
                       jnp.concatenate([l / 2, l / 2], axis=2))
  np.testing.assert_allclose(one, two, rtol=1e-6)
  np.testing.assert_allclose(one[..., :2, :], acc[:, :, 0, :2] / l[:, :, 0, :2, None], rtol=1e-6)
  np.testing.assert_array_equal(one[..., 2, :], 0.0)


def test_rows_that_see_nothing_give_zero():
  """A fully evicted KV head, and a cache whose newest slots are the only kept ones (most splits empty)."""
  c = Cache(T=2, S=256, evicted=0.0)
  q, k, v, kwargs = make_cache(c)
  keep = jnp.zeros((2, 2, 256), jnp.int8).at[0, 0, -5:].set(1).at[1, :, -40:].set(1)  # b0 head 1 sees nothing
  kwargs["keep"] = keep
  ours = jax.jit(lambda q, k, v, kw: decode_attention(q, k, v, block_kv=32, splits=8, **kw))(q, k, v, kwargs)
  ref = jax.jit(lambda q, k, v, kw: kernels.attention_reference(q, k, v, **kw))(q, k, v, kwargs)
  np.testing.assert_array_equal(np.asarray(ours[0, :, 4:]), 0.0)  # query heads 4-7 read KV head 1
  assert relative_error(ours, ref) <= 1e-6


def test_attention_dispatches_short_queries_to_the_decode_kernel():
  x = jnp.zeros((1, 64, 4, 32))

  def kernels_used(T, **kwargs):
    fn = lambda q, k: kernels.attention(q, k, k, implementation="pallas", **kwargs)
    return {name for name in ("tessera_attention_decode", "tessera_attention_fwd")
            if name in str(jax.make_jaxpr(fn)(x[:, :T], x))}

  assert kernels_used(1) == kernels_used(16) == {"tessera_attention_decode"}
  assert kernels_used(17) == {"tessera_attention_fwd"}
  assert kernels_used(8, segment_ids=(jnp.zeros((1, 8), jnp.int32), jnp.zeros((1, 64), jnp.int32))) == {
      "tessera_attention_fwd"}
