"""The TRIM-KV cache (shared/specs/trimkv.md §7): log beta stored next to K/V, eviction by s_i = (t_now - pos_i)
log beta_i, plain attention over what is kept.

The engine's cache (models/kv_cache.py) holds a float score per slot; a "token" policy has the model write one
score per token as it enters (a TRIM-KV block passes its log beta to attention.attend_cached), and the "trimkv"
policy turns it into the ranking. When a head
reaches M + buffer slots it keeps the top M by s_i (the newest token always stays), re-sorted by position, so its
length oscillates between M and M + buffer (§7 default strategy "alpha").
t_now = tokens seen + 1 = newest position + 2, as the official cache (`q_idx = seen_tokens + 1`).
`Policy.sinks` is not used by this policy (learned gates find their own sinks).
"""
import jax.numpy as jnp

from tessera.models import kv_cache


@kv_cache.register("trimkv", score="token", needs="a model with retention gates (configs/trimkv.py)")
def trimkv(inputs, budget):
  """Keep the `budget` entries of largest (t_now - pos_i) log beta_i = log alpha_i (scores hold log beta)."""
  newest_BxK = jnp.max(jnp.where(inputs.live_BxKxN, inputs.positions_BxKxN, -1), axis=-1)
  distance_BxKxN = (newest_BxK[..., None] + 2 - inputs.positions_BxKxN).astype(jnp.float32)
  return kv_cache.keep_top(distance_BxKxN * inputs.scores_BxKxN, inputs, budget)
