"""Causal self-attention in query blocks that skip the keys after them (`model.attention_impl="xla_blocked"`).

Why: the XLA reference (tessera.models.attention.dot_product_attention) builds the whole fp32 [T, T] score matrix
and masks half of it; on a CPU that half is real work (matmuls, exp, the backward pass). Query block i (QUERY_BLOCK
rows) reads only keys 0 .. end of block i, so 4 blocks do 5/8 of the work. Same numerics as the reference (fp32
logits and softmax, probabilities cast to v's dtype, the same finite mask value); masked keys contributed exactly 0
there, so the two differ only by summation order (tests/perf/test_attention_blocked.py).
"""
import jax
import jax.numpy as jnp

from tessera.models.attention import MASK_VALUE

QUERY_BLOCK = 128


def attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT=None, block=QUERY_BLOCK):
  """Causal (and, with segment ids, per-segment) attention; returns BxTxHxD in v's dtype. H % K == 0 (GQA)."""
  B, T, H, D = q_BxTxHxD.shape
  K = k_BxTxKxD.shape[2]
  if H % K:
    raise ValueError(f"attention: {H} query heads are not a multiple of {K} kv heads")
  q_BxTxKxGxD = q_BxTxHxD.reshape(B, T, K, H // K, D)
  outs = []
  for start in range(0, T, block):
    end = min(start + block, T)
    logits_BxKxGxQxS = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxD[:, start:end], k_BxTxKxD[:, :end],
                                  preferred_element_type=jnp.float32) * D ** -0.5
    mask_BxQxS = (jnp.arange(start, end)[:, None] >= jnp.arange(end)[None, :])[None]
    if segment_ids_BxT is not None:
      mask_BxQxS = mask_BxQxS & (segment_ids_BxT[:, start:end, None] == segment_ids_BxT[:, None, :end])
    logits_BxKxGxQxS = jnp.where(mask_BxQxS[:, None, None], logits_BxKxGxQxS, MASK_VALUE)
    probs_BxKxGxQxS = jax.nn.softmax(logits_BxKxGxQxS, axis=-1)
    outs.append(jnp.einsum("bkgts,bskd->btkgd", probs_BxKxGxQxS.astype(v_BxTxKxD.dtype), v_BxTxKxD[:, :end]))
  return jnp.concatenate(outs, axis=1).reshape(B, T, H, D)
