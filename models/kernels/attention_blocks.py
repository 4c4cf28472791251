"""Block skipping for the attention kernels: which KV blocks a query block can see, and vice versa.

Positions are data, not program ids, so static causal bounds would be wrong for packed documents, prefill and
compacted caches (kernels.md 3.4). Instead XLA precomputes cheap per-block statistics (max query position, min key
position, segment-id ranges, any kept key) and turns them into a contiguous [lo, hi) loop range per block. The
range is a superset of the truly visible blocks (exact per-element masking still happens in the kernel); for
training with `pos = arange` it equals the usual causal bound.

Inside that range, a run [full_lo, full_hi) of *fully visible* blocks (splash attention's "full" state: every
query row sees every key) skips the mask computation; the blocks before and after it are masked per element.
Loop order is unchanged, so skipping changes results by rounding only (the unmasked tile may compile differently).
"""

import jax.numpy as jnp

_INT_MAX = jnp.iinfo(jnp.int32).max
_INT_MIN = jnp.iinfo(jnp.int32).min


def _per_block(x, valid, block, fill, reduce):
  """Reduce the last axis of `x` per block of `block` entries, ignoring entries where `valid` is false."""
  x = jnp.where(valid, x, fill)
  return reduce(x.reshape(*x.shape[:-1], x.shape[-1] // block, block), axis=-1)


def visible_blocks(inputs, *, causal, q_len, kv_len, block_q, block_kv):
  """vis_BxKxNqxNk: True where query block i may see any key of KV block j (inputs padded to block multiples)."""
  B, T_pad = inputs.q_pos_BxT.shape
  _, K, S_pad = inputs.kv_pos_BxKxS.shape
  q_valid = jnp.broadcast_to(jnp.arange(T_pad) < q_len, (B, T_pad))
  kv_valid = jnp.broadcast_to(jnp.arange(S_pad) < kv_len, (B, K, S_pad))
  if inputs.keep_BxKxS is not None:
    kv_valid = kv_valid & (inputs.keep_BxKxS != 0)
  q_any = _per_block(q_valid, q_valid, block_q, False, jnp.any)[:, None, :, None]
  kv_any = _per_block(kv_valid, kv_valid, block_kv, False, jnp.any)[:, :, None, :]
  vis = q_any & kv_any
  if causal:
    q_pos_max = _per_block(inputs.q_pos_BxT, q_valid, block_q, _INT_MIN, jnp.max)
    kv_pos_min = _per_block(inputs.kv_pos_BxKxS, kv_valid, block_kv, _INT_MAX, jnp.min)
    vis &= kv_pos_min[:, :, None, :] <= q_pos_max[:, None, :, None]
  if inputs.q_seg_BxT is not None:
    kv_seg = jnp.broadcast_to(inputs.kv_seg_BxS[:, None, :], (B, K, S_pad))
    q_seg_min = _per_block(inputs.q_seg_BxT, q_valid, block_q, _INT_MAX, jnp.min)[:, None, :, None]
    q_seg_max = _per_block(inputs.q_seg_BxT, q_valid, block_q, _INT_MIN, jnp.max)[:, None, :, None]
    kv_seg_min = _per_block(kv_seg, kv_valid, block_kv, _INT_MAX, jnp.min)[:, :, None, :]
    kv_seg_max = _per_block(kv_seg, kv_valid, block_kv, _INT_MIN, jnp.max)[:, :, None, :]
    vis &= (kv_seg_min <= q_seg_max) & (kv_seg_max >= q_seg_min)
  return vis


def full_blocks(inputs, *, causal, q_len, kv_len, block_q, block_kv):
  """full_BxKxNqxNk: True where every query row of block i sees every key of KV block j.

  Blocks holding padding (query rows or keys past the true lengths) are never full: padded query rows carry
  position 0, whose retention exponent above the diagonal would overflow without the mask.
  """
  B, T_pad = inputs.q_pos_BxT.shape
  _, K, S_pad = inputs.kv_pos_BxKxS.shape
  q_whole = (jnp.arange(T_pad // block_q) + 1) * block_q <= q_len
  kv_whole = (jnp.arange(S_pad // block_kv) + 1) * block_kv <= kv_len
  full = jnp.broadcast_to(q_whole[:, None] & kv_whole[None, :], (B, K, T_pad // block_q, S_pad // block_kv))
  every = lambda x: _per_block(x, True, block_kv, True, jnp.all)
  if inputs.keep_BxKxS is not None:
    full &= every(inputs.keep_BxKxS != 0)[:, :, None, :]
  if causal:
    q_pos_min = _per_block(inputs.q_pos_BxT, True, block_q, _INT_MAX, jnp.min)
    kv_pos_max = _per_block(inputs.kv_pos_BxKxS, True, block_kv, _INT_MIN, jnp.max)
    full &= kv_pos_max[:, :, None, :] <= q_pos_min[:, None, :, None]
  if inputs.q_seg_BxT is not None:
    q_seg = inputs.q_seg_BxT
    q_one = _per_block(q_seg, True, block_q, _INT_MAX, jnp.min) == _per_block(q_seg, True, block_q, _INT_MIN,
                                                                                jnp.max)
    kv_seg = inputs.kv_seg_BxS
    kv_min = _per_block(kv_seg, True, block_kv, _INT_MAX, jnp.min)
    kv_one = kv_min == _per_block(kv_seg, True, block_kv, _INT_MIN, jnp.max)
    q_min = _per_block(q_seg, True, block_q, _INT_MAX, jnp.min)
    same = q_one[:, :, None] & kv_one[:, None, :] & (q_min[:, :, None] == kv_min[:, None, :])
    full &= same[:, None]
  return full


def loop_ranges(vis, axis):
  """First and one-past-last True index along `axis` (int32); (0, 0) where there is none: an empty loop."""
  vis = jnp.moveaxis(vis, axis, -1)
  n = vis.shape[-1]
  any_ = vis.any(-1)
  lo = jnp.where(any_, jnp.argmax(vis, -1), 0)
  hi = jnp.where(any_, n - jnp.argmax(vis[..., ::-1], -1), 0)
  return lo.astype(jnp.int32), hi.astype(jnp.int32)


LO, HI, FULL_LO, FULL_HI = range(4)  # rows of the ranges array the kernels read


def block_ranges(vis, full, axis):
  """ranges_BxKx4xN (int32): per block along the other axis, the loop range [lo, hi) over `axis` and inside it
  the first run [full_lo, full_hi) of full blocks; full_lo = full_hi = hi when there is none (or `full` is None).
  """
  lo, hi = loop_ranges(vis, axis)
  if full is None:
    return jnp.stack([lo, hi, hi, hi], axis=-2)
  full = jnp.moveaxis(full, axis, -1)
  n = full.shape[-1]
  index = jnp.arange(n, dtype=jnp.int32).reshape((1,) * (full.ndim - 1) + (n,))
  any_full = full.any(-1)
  full_lo = jnp.where(any_full, jnp.argmax(full, -1), hi).astype(jnp.int32)
  after = ~full & (index > full_lo[..., None])  # the first non-full block after the run's start ends it
  full_hi = jnp.where(any_full, jnp.where(after.any(-1), jnp.argmax(after, -1), n), hi).astype(jnp.int32)
  return jnp.stack([lo, hi, full_lo, jnp.minimum(full_hi, hi)], axis=-2)
