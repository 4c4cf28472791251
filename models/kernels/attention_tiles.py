"""Tile math shared by the flash (training/prefill) and split-K decode kernels: masked scores of one q x kv tile,
and the loop over a row's visible KV blocks with the mask dropped on full ones.

`st` is the kernel's static description; these read its `causal`, `scale`, `retention_mode` (None = plain),
`has_segments`, `has_keep` and `kv_len` (unpadded key count).
"""

import functools

from jax import lax
from jax.experimental import pallas as pl
import jax.numpy as jnp

from tessera.models.kernels.attention_blocks import FULL_HI, FULL_LO, HI, LO
from tessera.models.kernels.backend import MASK_VALUE, dot


def logits(st, q, k, q_pos, q_seg, k_pos, k_seg, keep, lb, kv_start, bk, masked=True):
  """Scores s (bq, bk) plus what the backward needs: vis (None when nothing is masked), raw logits, decay factor
  a and distances. `masked=False` is for full blocks: every key is visible, so no mask is computed at all."""
  raw = dot(q, k, trans_b=True) * st.scale
  vis = None

  def both(mask):
    return mask if vis is None else vis & mask

  if masked:
    if st.causal:
      vis = both(q_pos[:, None] >= k_pos[None, :])
    if st.has_segments:
      vis = both(q_seg[:, None] == k_seg[None, :])
    if st.has_keep:
      vis = both((keep != 0)[None, :])
    if st.kv_len % bk:  # padded keys of the last block
      vis = both((kv_start + lax.broadcasted_iota(jnp.int32, (1, bk), 1)) < st.kv_len)
  a = dist = None
  s = raw
  if st.retention_mode is not None:
    dist = (q_pos[:, None] - k_pos[None, :]).astype(jnp.float32)
    exponent = dist * lb[None, :]
    if vis is not None:  # before exp: above the diagonal the exponent is positive and can overflow
      exponent = jnp.where(vis, exponent, 0.0)
    if st.retention_mode == "mul_logit":
      a = jnp.exp(exponent)
      s = raw * a
    else:
      s = raw + exponent
  if vis is not None:
    s = jnp.where(vis, s, MASK_VALUE)
  return s, vis, raw, a, dist


def masked_probs(vis, p):
  """Zero masked probabilities: a fully masked row of a block has s = MASK everywhere, and exp(s - m) = 1."""
  return p if vis is None else jnp.where(vis, p, 0.0)


def kv_rows(refs, st, rows):
  """Key-side vectors of one KV block (None where the input is absent)."""
  return (refs["kv_pos"][rows], refs["kv_seg"][rows] if st.has_segments else None,
          refs["keep"][rows] if st.has_keep else None,
          refs["lb"][rows] if st.retention_mode is not None else None)


def softmax_init(q):
  """Online-softmax state of a q tile: fp32 accumulator, running max (the finite mask value) and normaliser."""
  rows = q.shape[0]
  return (jnp.zeros((rows, q.shape[-1]), jnp.float32), jnp.full((rows,), MASK_VALUE, jnp.float32),
          jnp.zeros((rows,), jnp.float32))


def attend_block(st, refs, q, q_pos, q_seg, j, carry, masked, *, bk, kv_offset=0):
  """One online-softmax step of a forward kernel over KV block j of refs["k"/"v"] (keys kv_offset + j*bk...)."""
  acc, m, l = carry
  rows = pl.ds(pl.multiple_of(j * bk, bk), bk)
  v = refs["v"][rows, :]
  s, vis, _, _, _ = logits(st, q, refs["k"][rows, :], q_pos, q_seg, *kv_rows(refs, st, rows), kv_offset + j * bk,
                           bk, masked)
  m_new = jnp.maximum(m, s.max(axis=1))
  correction = jnp.exp(m - m_new)
  p = masked_probs(vis, jnp.exp(s - m_new[:, None]))
  l = correction * l + p.sum(axis=1)
  acc = correction[:, None] * acc + dot(p.astype(v.dtype), v)
  return acc, m_new, l


def visible_block_loop(ranges_ref, i, step, init, skip_full_masks):
  """Runs step(j, carry, masked) over the visible blocks [lo, hi) of row i of `ranges_ref` (attention_blocks.
  block_ranges), in order: masked before and after the run of full blocks, unmasked inside it; with
  `skip_full_masks=False`, one masked loop (a third of the code to trace: interpret mode's compile time)."""
  lo, hi = ranges_ref[LO, i], ranges_ref[HI, i]
  if not skip_full_masks:
    return lax.fori_loop(lo, hi, functools.partial(step, masked=True), init)
  full_lo, full_hi = ranges_ref[FULL_LO, i], ranges_ref[FULL_HI, i]
  carry = lax.fori_loop(lo, full_lo, functools.partial(step, masked=True), init)
  carry = lax.fori_loop(full_lo, full_hi, functools.partial(step, masked=False), carry)
  return lax.fori_loop(full_hi, hi, functools.partial(step, masked=True), carry)
