"""One canonical form for attention's optional inputs, shared by the reference and the kernels.

Visibility (kernels.md 3.2): vis[t, i] = keep_i and seg_q[t] == seg_k[i] and (not causal or pos_q[t] >= pos_k[i]).
Positions are inputs (per KV head on the key side, since evicted caches differ per head), so one code path serves
training, prefill and compacted caches.
"""

from typing import NamedTuple

import jax.numpy as jnp

RETENTION_MODES = ("mul_logit", "add_bias")


class AttentionInputs(NamedTuple):
  q_pos_BxT: jnp.ndarray  # int32
  kv_pos_BxKxS: jnp.ndarray  # int32
  q_seg_BxT: jnp.ndarray | None  # int32
  kv_seg_BxS: jnp.ndarray | None  # int32
  keep_BxKxS: jnp.ndarray | None  # int8, 0 = evicted
  log_beta_BxKxS: jnp.ndarray | None  # fp32, <= 0


def _per_kv_head(x, B, K, S, name):
  """Accept [B, S] (one array for all KV heads, as in training) or [B, K, S]."""
  if x.shape == (B, S):
    return jnp.broadcast_to(x[:, None, :], (B, K, S))
  if x.shape != (B, K, S):
    raise ValueError(f"{name} must be [B, S] or [B, K, S] = {(B, K, S)}, got {x.shape}")
  return x


def canonical_inputs(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, *, segment_ids=None, q_positions=None, kv_positions=None,
                     log_retention=None, keep=None, retention_mode="mul_logit"):
  B, T, H, D = q_BxTxHxD.shape
  _, S, K, _ = k_BxSxKxD.shape
  if k_BxSxKxD.shape != v_BxSxKxD.shape or k_BxSxKxD.shape[0] != B or k_BxSxKxD.shape[3] != D:
    raise ValueError(f"q {q_BxTxHxD.shape}, k {k_BxSxKxD.shape}, v {v_BxSxKxD.shape} are not [B,T,H,D], [B,S,K,D]")
  if H % K:
    raise ValueError(f"query heads ({H}) must be a multiple of KV heads ({K})")
  if retention_mode not in RETENTION_MODES:
    raise ValueError(f"retention_mode must be one of {RETENTION_MODES}, got {retention_mode!r}")
  if q_positions is None:
    q_positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  if kv_positions is None:
    kv_positions = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
  kv_positions = _per_kv_head(kv_positions, B, K, S, "kv_positions")
  if q_positions.shape != (B, T):
    raise ValueError(f"q_positions must be [B, T] = {(B, T)}, got {q_positions.shape}")
  if segment_ids is None:
    q_seg = kv_seg = None
  else:
    q_seg, kv_seg = segment_ids if isinstance(segment_ids, (tuple, list)) else (segment_ids, segment_ids)
    if q_seg.shape != (B, T) or kv_seg.shape != (B, S):
      raise ValueError(f"segment ids must be [B, T] and [B, S], got {q_seg.shape} and {kv_seg.shape}")
    q_seg, kv_seg = q_seg.astype(jnp.int32), kv_seg.astype(jnp.int32)
  if keep is not None:
    keep = _per_kv_head(keep, B, K, S, "keep").astype(jnp.int8)
  if log_retention is not None:
    if log_retention.shape != (B, K, S):
      raise ValueError(f"log_retention must be [B, K, S] = {(B, K, S)}, got {log_retention.shape}")
    log_retention = log_retention.astype(jnp.float32)
  return AttentionInputs(q_positions.astype(jnp.int32), kv_positions.astype(jnp.int32), q_seg, kv_seg, keep,
                         log_retention)
