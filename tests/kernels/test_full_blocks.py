"""Full-block skipping (splash attention's "full" state): which blocks are full, and that skipping their mask
leaves the outputs and gradients of the Pallas kernels equal up to rounding (interpret mode on CPU).

Not bitwise: the unmasked tile is a different program, which XLA (or Triton) may fuse differently (its exp, say);
observed differences are one fp32 ulp.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tessera.models import kernels
from tessera.models.kernels import attention_blocks, attention_inputs
from tessera.models.kernels.attention_reference import visibility

from test_attention_kernel import BLOCKS_16, Case, check_close, make_inputs, relative_error, value_and_grads


def packed_inputs(T, S_valid):
  """Two batch rows over 64 padded slots: packed documents (row 0), one document with evicted keys (row 1)."""
  seg = jnp.stack([(jnp.arange(T) >= 20).astype(jnp.int32) + (jnp.arange(T) >= 45), jnp.zeros(T, jnp.int32)])
  starts = jnp.stack([jnp.where(jnp.arange(T) >= 45, 45, jnp.where(jnp.arange(T) >= 20, 20, 0)), jnp.zeros(T, int)])
  pos = (jnp.arange(T)[None] - starts).astype(jnp.int32)
  keep = jnp.ones((2, T), jnp.int8).at[1, 33:35].set(0)
  valid = jnp.arange(T)[None] < S_valid
  x = jnp.zeros((2, T, 2, 16))
  return attention_inputs.canonical_inputs(x, x[:, :, :1], x[:, :, :1], segment_ids=jnp.where(valid, seg, -1),
                                           q_positions=pos, kv_positions=pos, keep=keep)


def test_full_blocks_are_exactly_the_fully_visible_tiles():
  T, valid_len, bq, bk = 64, 60, 16, 8  # the last q block and the last KV block hold padding
  inputs = packed_inputs(T, valid_len)
  kw = dict(causal=True, q_len=valid_len, kv_len=valid_len, block_q=bq, block_kv=bk)
  full = np.asarray(attention_blocks.full_blocks(inputs, **kw))
  vis = np.asarray(visibility(inputs, causal=True))[:, :, 0]  # [B, K, T, S]
  tiles = vis.reshape(2, 1, T // bq, bq, T // bk, bk).all(axis=(3, 5))
  whole = ((np.arange(T // bq) + 1) * bq <= valid_len)[:, None] & ((np.arange(T // bk) + 1) * bk <= valid_len)
  np.testing.assert_array_equal(full, tiles & whole)
  assert 0 < full.sum() < np.asarray(attention_blocks.visible_blocks(inputs, **kw)).sum()
  ranges = np.asarray(attention_blocks.block_ranges(attention_blocks.visible_blocks(inputs, **kw),
                                                    jnp.asarray(full), axis=3))
  lo, hi, full_lo, full_hi = (ranges[:, :, r] for r in range(4))
  assert np.all((lo <= full_lo) & (full_lo <= full_hi) & (full_hi <= hi))
  for b, i in np.ndindex(2, T // bq):
    assert full[b, 0, i, full_lo[b, 0, i]:full_hi[b, 0, i]].all()
  assert (full_hi > full_lo).any() and (full_lo > lo).any()  # runs exist, some after a partial block


@pytest.mark.parametrize("case", [
    Case(B=2, T=96, S=96, H=4, K=2, segments=True, retention="mul_logit"),
    pytest.param(Case("bfloat16", B=1, T=80, S=80, H=4, K=1, retention="add_bias"), marks=pytest.mark.slow),
    pytest.param(Case(T=32, S=80, H=4, K=2, retention="mul_logit", cache="prefill"), marks=pytest.mark.slow),
], ids=str)
def test_skipping_full_block_masks_changes_only_rounding(case):
  args, kwargs, cotangent = make_inputs(case)
  inputs = attention_inputs.canonical_inputs(*args[:3], **{k: v for k, v in kwargs.items() if k != "causal"})
  full = attention_blocks.full_blocks(inputs, causal=case.causal, q_len=case.T, kv_len=case.S, block_q=16,
                                      block_kv=16)
  assert full.any()  # the skip is really taken (lengths are multiples of 16 here: no padding)
  results = []
  for skip in (False, True):
    fn = lambda *a, skip=skip, **kw: kernels.flash_attention(*a, block_sizes=BLOCKS_16, skip_full_masks=skip, **kw)
    results.append(value_and_grads(fn, args, kwargs, cotangent, case.retention))
  for off, on in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    assert relative_error(on, off) <= (1e-6 if case.dtype == "float32" else 8e-3)
  ref = lambda q, k, v, **kw: kernels.attention_reference(q.astype(jnp.float32), k.astype(jnp.float32),
                                                           v.astype(jnp.float32), **kw)
  check_close(case, results[1], value_and_grads(ref, args, kwargs, cotangent, case.retention))
