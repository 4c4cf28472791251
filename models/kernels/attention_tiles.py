"""Tile math shared by the flash (training/prefill) and split-K decode kernels: masked scores of one q x kv tile,
and the loop over a row's visible KV blocks with the mask dropped on full ones.

`st` is the kernel's static description; these read its `causal`, `scale`, `retention_mode` (None = plain),
`has_segments`, `has_keep` and `kv_len` (unpadded key count).
"""

import functools

from jax import lax
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
