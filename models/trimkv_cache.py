"""The TRIM-KV cache (shared/specs/trimkv.md §7): log beta stored next to K/V, eviction by s_i = (t_now - pos_i)
log beta_i, plain attention over what is kept.

The engine's cache (models/kv_cache.py) already holds a float score per slot; a TRIM-KV block writes each token's
log beta there (`append_scored`, `merge_scored`) and the "trimkv" policy turns it into the ranking. When a head
reaches M + buffer slots it keeps the top M by s_i (the newest token always stays), re-sorted by position, so its
length oscillates between M and M + buffer (§7 default strategy "alpha").
t_now = tokens seen + 1 = newest position + 2, as the official cache (`q_idx = seen_tokens + 1`).
`Policy.sinks` is not used by this policy (learned gates find their own sinks).
"""
import jax.numpy as jnp

from tessera.models import kv_cache


@kv_cache.register("trimkv")
def trimkv(inputs, budget):
  """Keep the `budget` entries of largest (t_now - pos_i) log beta_i = log alpha_i (scores hold log beta)."""
  newest_BxK = jnp.max(jnp.where(inputs.live_BxKxN, inputs.positions_BxKxN, -1), axis=-1)
  distance_BxKxN = (newest_BxK[..., None] + 2 - inputs.positions_BxKxN).astype(jnp.float32)
  return kv_cache.keep_top(distance_BxKxN * inputs.scores_BxKxN, inputs, budget)


def append_scored(cache, k_Bx1xKxE, v_Bx1xKxE, positions_Bx1, live_Bx1, log_beta_BxKx1):
  """kv_cache.append_one, then the new token's log beta written into its slot.

  append_one stores a zero score for the new token and may evict first; that is harmless: the newest token is
  never evicted whatever its score, and after the (position-sorted) compaction it sits in slot length - 1.
  A row whose token is not live keeps its old score there.
  """
  cache = kv_cache.append_one(cache, k_Bx1xKxE, v_Bx1xKxE, positions_Bx1, live_Bx1)
  slot_BxK = jnp.maximum(cache.lengths_BxK - 1, 0)
  old_BxK = jnp.take_along_axis(cache.scores_BxKxC, slot_BxK[..., None], axis=-1)[..., 0]
  live_BxK = jnp.ones(slot_BxK.shape, bool) if live_Bx1 is None else jnp.broadcast_to(live_Bx1, slot_BxK.shape)
  new_BxK = jnp.where(live_BxK, log_beta_BxKx1[..., 0].astype(jnp.float32), old_BxK)
  C = cache.scores_BxKxC.shape[-1]
  at_slot_BxKxC = jnp.arange(C) == slot_BxK[..., None]
  return cache.replace(scores_BxKxC=jnp.where(at_slot_BxKxC, new_BxK[..., None], cache.scores_BxKxC))


def merge_scored(cache, k_BxNxKxE, v_BxNxKxE, positions_BxKxN, live_BxKxN, log_beta_BxKxT):
  """kv_cache.merge with the new tokens' log beta as their scores (prefill: evict after the whole prompt, as the
  official `compress()` placement, §7). kv_cache.merge writes zero scores for new tokens, so this reimplements
  its two lines around kv_cache._select."""
  scores_BxKxN = jnp.concatenate([cache.scores_BxKxC, log_beta_BxKxT.astype(jnp.float32)], axis=-1)
  full_BxK = live_BxKxN.sum(-1) >= cache.policy.capacity
  return kv_cache.constrain(kv_cache._select(k_BxNxKxE, v_BxNxKxE, positions_BxKxN, live_BxKxN, scores_BxKxN,
                                             full_BxK, cache.policy))
