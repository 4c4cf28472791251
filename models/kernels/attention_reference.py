"""XLA reference for (retention-gated) attention: fp32, HIGHEST precision, chunked over query blocks.

It is both the test oracle for the Pallas kernel and the production path on CPU/TPU. HIGHEST matters: on GPU an
fp32 einsum defaults to TF32, and a TF32 "reference" is not a reference.
"""

import functools

import jax
import jax.numpy as jnp

from tessera.models.kernels.attention_inputs import canonical_inputs
from tessera.models.kernels.backend import MASK_VALUE

HIGHEST = jax.lax.Precision.HIGHEST


def visibility(inputs, causal):
  """vis_BxKx1xTxS: which keys each query row sees (kernels.md 3.2)."""
  q_pos = inputs.q_pos_BxT
  k_pos = inputs.kv_pos_BxKxS
  B, K, S = k_pos.shape
  vis = jnp.ones((B, K, 1, q_pos.shape[1], S), bool)
  if causal:
    vis &= q_pos[:, None, None, :, None] >= k_pos[:, :, None, None, :]
  if inputs.q_seg_BxT is not None:
    vis &= (inputs.q_seg_BxT[:, :, None] == inputs.kv_seg_BxS[:, None, :])[:, None, None]
  if inputs.keep_BxKxS is not None:
    vis &= (inputs.keep_BxKxS != 0)[:, :, None, None, :]
  return vis


def _attend(q_BxTxKxGxD, k_BxSxKxD, v_BxSxKxD, inputs, q_pos_BxT, q_seg_BxT, *, causal, scale, retention_mode):
  chunk = inputs._replace(q_pos_BxT=q_pos_BxT, q_seg_BxT=q_seg_BxT)
  vis = visibility(chunk, causal)
  raw = scale * jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxD.astype(jnp.float32), k_BxSxKxD.astype(jnp.float32),
                           precision=HIGHEST)
  lb = inputs.log_beta_BxKxS
  if lb is None:
    s = raw
  else:
    dist = (q_pos_BxT[:, None, None, :, None] - inputs.kv_pos_BxKxS[:, :, None, None, :]).astype(jnp.float32)
    exponent = jnp.where(vis, dist * lb[:, :, None, None, :], 0.0)  # where before exp: E > 0 above the diagonal
    s = raw * jnp.exp(exponent) if retention_mode == "mul_logit" else raw + exponent
  # A finite mask keeps fully masked rows NaN-free in value and gradient; their probabilities are zeroed.
  p = jnp.where(vis, jax.nn.softmax(jnp.where(vis, s, MASK_VALUE), axis=-1), 0.0)
  return jnp.einsum("bkgts,bskd->btkgd", p, v_BxSxKxD.astype(jnp.float32), precision=HIGHEST)


def attention_reference(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, *, causal=True, segment_ids=None, q_positions=None,
                        kv_positions=None, log_retention=None, retention_mode="mul_logit", keep=None, scale=None,
                        q_chunk=1024):
  """softmax(logits) @ v with the trimkv.md section 4 retention term; returns q's dtype.

  Query rows with no visible key output zeros. Long queries are processed `q_chunk` rows at a time under
  `jax.checkpoint`, so memory is O(q_chunk * S) per head in the forward and the backward.
  """
  inputs = canonical_inputs(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_ids=segment_ids, q_positions=q_positions,
                            kv_positions=kv_positions, log_retention=log_retention, keep=keep,
                            retention_mode=retention_mode)
  B, T, H, D = q_BxTxHxD.shape
  K = k_BxSxKxD.shape[2]
  scale = D ** -0.5 if scale is None else scale
  q_BxTxKxGxD = q_BxTxHxD.reshape(B, T, K, H // K, D)
  attend = functools.partial(_attend, k_BxSxKxD=k_BxSxKxD, v_BxSxKxD=v_BxSxKxD, inputs=inputs, causal=causal,
                             scale=scale, retention_mode=retention_mode)
  q_seg = inputs.q_seg_BxT
  if T <= q_chunk:
    o = attend(q_BxTxKxGxD, q_pos_BxT=inputs.q_pos_BxT, q_seg_BxT=q_seg)
  else:
    n = -(-T // q_chunk)
    pad = n * q_chunk - T

    def chunks(x):  # [B, T, ...] -> [n, B, q_chunk, ...]
      x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
      return jnp.moveaxis(x.reshape(B, n, q_chunk, *x.shape[2:]), 1, 0)

    def one_chunk(args):
      q_c, pos_c, seg_c = args
      return attend(q_c, q_pos_BxT=pos_c, q_seg_BxT=seg_c)

    o = jax.lax.map(jax.checkpoint(one_chunk), (chunks(q_BxTxKxGxD), chunks(inputs.q_pos_BxT),
                                                None if q_seg is None else chunks(q_seg)))
    o = jnp.moveaxis(o, 0, 1).reshape(B, n * q_chunk, K, H // K, D)[:, :T]
  return o.reshape(B, T, H, D).astype(q_BxTxHxD.dtype)
