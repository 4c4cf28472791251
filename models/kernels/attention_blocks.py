"""Block skipping for the attention kernels: which KV blocks a query block can see, and vice versa.

Positions are data, not program ids, so static causal bounds would be wrong for packed documents, prefill and
compacted caches (kernels.md 3.4). Instead XLA precomputes cheap per-block statistics (max query position, min key
position, segment-id ranges, any kept key) and turns them into a contiguous [lo, hi) loop range per block. The
range is a superset of the truly visible blocks (exact per-element masking still happens in the kernel); for
training with `pos = arange` it equals the usual causal bound.
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


def loop_ranges(vis, axis):
  """First and one-past-last True index along `axis` (int32); (0, 0) where there is none: an empty loop."""
  vis = jnp.moveaxis(vis, axis, -1)
  n = vis.shape[-1]
  any_ = vis.any(-1)
  lo = jnp.where(any_, jnp.argmax(vis, -1), 0)
  hi = jnp.where(any_, n - jnp.argmax(vis[..., ::-1], -1), 0)
  return lo.astype(jnp.int32), hi.astype(jnp.int32)
