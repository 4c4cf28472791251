"""TRIM-KV's retention gate and soft occupancy (shared/specs/trimkv.md §3, §4).

The gate reads each token's normalised hidden state once and emits log beta per KV head: the token's importance
at a later position t is beta^(t - i). Soft occupancy S_t = sum_{i <= t, same segment} beta_i^(t - i) is the
"number of tokens the head still holds" that the capacity loss bounds by the budget M (§5).
Everything here runs in fp32 (§3: "always carry log beta in fp32"); no beta ** (t - i) is ever materialised.
"""
import functools

import jax
import jax.numpy as jnp
from flax import nnx

GATE_VARIANTS = ("rg",)  # §3: tessera implements the default variant only
GATE_NAME = "retention_gate"  # §3: the attribute (path component) train.trainable selects


def _param(rngs, init, shape, axes):
  """An fp32 Param (§6: fp32 gate params whatever model.param_dtype is) with logical axes."""
  return nnx.Param(nnx.with_partitioning(init, axes)(rngs.params(), shape, jnp.float32))


class RetentionGate(nnx.Module):
  """Variant "rg" (§3): log beta = log_sigmoid(W2 silu(W1 x + b1) + b), one scalar per (token, KV head).

  W1 [D, D'] with bias b1, W2 [D', K] without bias, b [K] a separate per-head bias. Init (§3, the official
  config): W1, W2 ~ N(0, init_std = 0.02), b1 = 0, b = bias_init = 10 (beta ~ 0.99995: no decay at the start).
  phi = SiLU, the decoder's MLP activation.
  """

  def __init__(self, d_model, hidden, kv_heads, *, bias_init=10.0, init_std=0.02, rngs):
    normal = nnx.initializers.normal(init_std)
    self.w1 = _param(rngs, normal, (d_model, hidden), ("embed", None))
    self.b1 = _param(rngs, nnx.initializers.zeros, (hidden,), (None,))
    self.w2 = _param(rngs, normal, (hidden, kv_heads), (None, "kv_heads"))
    self.bias = _param(rngs, nnx.initializers.constant(bias_init), (kv_heads,), ("kv_heads",))

  def __call__(self, x_BxTxD):
    """Normalised hidden states -> log beta [B, K, T] in fp32 (<= 0)."""
    x_BxTxD = x_BxTxD.astype(jnp.float32)
    h_BxTxF = jax.nn.silu(x_BxTxD @ self.w1[...] + self.b1[...])
    log_beta_BxTxK = jax.nn.log_sigmoid(h_BxTxF @ self.w2[...] + self.bias[...])
    return jnp.swapaxes(log_beta_BxTxK, 1, 2)


def _occupancy_rows(log_beta_BxKxS, kv_pos_BxS, kv_seg_BxS, q_pos_BxT, q_seg_BxT):
  """S for a block of query rows: [B, K, T]. The exponent is selected to 0 where a key is not visible *before*
  exp (§4 numerics: above the diagonal (t - i) log beta > 0 and could overflow)."""
  dist_BxTxS = (q_pos_BxT[:, :, None] - kv_pos_BxS[:, None, :]).astype(jnp.float32)
  vis_BxTxS = dist_BxTxS >= 0
  if q_seg_BxT is not None:
    vis_BxTxS &= q_seg_BxT[:, :, None] == kv_seg_BxS[:, None, :]
  exponent_BxKxTxS = jnp.where(vis_BxTxS[:, None], dist_BxTxS[:, None] * log_beta_BxKxS[:, :, None, :], 0.0)
  return jnp.sum(jnp.where(vis_BxTxS[:, None], jnp.exp(exponent_BxKxTxS), 0.0), axis=-1)


def soft_occupancy(log_beta_BxKxT, positions_BxT=None, segment_ids_BxT=None, q_chunk=512):
  """S_t = sum_{i: pos_i <= pos_t, seg_i == seg_t} exp((pos_t - pos_i) log beta_i), [B, K, T] fp32 (§4).

  Distances are the tokens' positions, so packed documents (positions restart, segment ids differ) only count
  their own tokens. Query rows go `q_chunk` at a time under jax.checkpoint: O(q_chunk * T) memory per head.
  """
  B, K, T = log_beta_BxKxT.shape
  log_beta_BxKxT = log_beta_BxKxT.astype(jnp.float32)
  if positions_BxT is None:
    positions_BxT = jnp.broadcast_to(jnp.arange(T), (B, T))
  rows = functools.partial(_occupancy_rows, log_beta_BxKxT, positions_BxT, segment_ids_BxT)
  if T <= q_chunk:
    return rows(positions_BxT, segment_ids_BxT)
  n = -(-T // q_chunk)
  pad = n * q_chunk - T

  def chunks(x_BxT):  # [B, T] -> [n, B, q_chunk]
    return jnp.moveaxis(jnp.pad(x_BxT, [(0, 0), (0, pad)]).reshape(B, n, q_chunk), 1, 0)

  seg = None if segment_ids_BxT is None else chunks(segment_ids_BxT)
  out_NxBxKxC = jax.lax.map(jax.checkpoint(lambda a: rows(*a)), (chunks(positions_BxT), seg))
  return jnp.moveaxis(out_NxBxKxC, 0, 2).reshape(B, K, n * q_chunk)[:, :, :T]


def retention_matrix(log_beta_BxKxS, q_positions_BxT, kv_positions_BxS):
  """A[t, i] = beta_i^(t - i) for pos_i <= pos_t, else 0: [B, K, T, S] (§4 "power stair"; tests and plots only,
  training never materialises it outside the attention kernel)."""
  dist_BxTxS = (q_positions_BxT[:, :, None] - kv_positions_BxS[:, None, :]).astype(jnp.float32)
  vis = (dist_BxTxS >= 0)[:, None]
  exponent = jnp.where(vis, dist_BxTxS[:, None] * log_beta_BxKxS[:, :, None, :].astype(jnp.float32), 0.0)
  return jnp.where(vis, jnp.exp(exponent), 0.0)
