"""Public kernel entries: one per kernel family, with the `implementation` switch the model configs set.

"xla" is the reference (and the production path on CPU/TPU), "pallas" the Pallas kernels (interpret mode on a CPU
backend, for tests), "cudnn" plain attention through `jax.nn.dot_product_attention` on GPU, and "auto" the best
available for the backend and the arguments.
"""

import jax
import jax.numpy as jnp

from tessera.models.kernels.attention_decode import MAX_DECODE_QUERIES, decode_attention
from tessera.models.kernels.attention_pallas import BlockSizes, flash_attention
from tessera.models.kernels.attention_reference import attention_reference
from tessera.models.kernels.backend import check_implementation
from tessera.models.kernels.stem_lookup import gated_lookup


def _cudnn_supports(q, *, plain):
  D = q.shape[-1]
  return plain and q.dtype in (jnp.bfloat16, jnp.float16) and D % 8 == 0 and D <= 256


def attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, *, causal=True, segment_ids=None, q_positions=None,
              kv_positions=None, log_retention=None, retention_mode="mul_logit", keep=None, scale=None,
              implementation="auto", block_sizes=BlockSizes()):
  """Attention with GQA (H a multiple of K), packed segments, keep masks and the TRIM-KV retention term.

  q [B, T, H, D], k/v [B, S, K, D] -> [B, T, H, D] in q's dtype. `segment_ids` is [B, T] (self-attention) or a
  `(q_segment_ids [B, T], kv_segment_ids [B, S])` pair; positions default to `arange` and drive both the causal
  mask and the retention distance; `log_retention` is log beta [B, K, S] (fp32, <= 0) applied as
  `retention_mode` ("mul_logit": TRIM-KV's decay on the logits; "add_bias": additive log-decay); `keep` [B, S] or
  [B, K, S] (0 = evicted). Rows without any visible key return zeros. `block_sizes` only affects "pallas".

  "pallas" runs the split-K decode kernel for up to 16 queries without segment ids (generation: a decode step or
  a short prefill chunk over a cache), the flash kernels otherwise.
  """
  check_implementation(implementation)
  plain = segment_ids is None and q_positions is None and kv_positions is None and log_retention is None and (
      keep is None)
  if implementation == "auto":
    backend = jax.default_backend()
    if backend != "gpu":
      implementation = "xla"
    else:
      implementation = "cudnn" if _cudnn_supports(q_BxTxHxD, plain=plain) else "pallas"
  if implementation == "cudnn":
    if not _cudnn_supports(q_BxTxHxD, plain=plain):
      raise ValueError("implementation='cudnn' covers plain attention only (no segments, positions, retention or "
                       "keep; bf16/fp16; head_dim a multiple of 8, <= 256): use 'pallas'")
    return jax.nn.dot_product_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, scale=scale, is_causal=causal,
                                        implementation="cudnn")
  kwargs = dict(causal=causal, segment_ids=segment_ids, q_positions=q_positions, kv_positions=kv_positions,
                log_retention=log_retention, retention_mode=retention_mode, keep=keep, scale=scale)
  if implementation == "xla":
    return attention_reference(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, **kwargs)
  if q_BxTxHxD.shape[1] <= MAX_DECODE_QUERIES and segment_ids is None:
    del kwargs["segment_ids"]
    return decode_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, block_kv=block_sizes.decode_kv,
                            splits=block_sizes.decode_splits, **kwargs)
  return flash_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, block_sizes=block_sizes, **kwargs)


def stem_lookup(table_VxF, ids, gate, *, implementation="auto"):
  """STEM's fused lookup `silu(gate) * table[ids]`: ids [...] int, gate [..., F] -> [..., F] in gate's dtype.

  Both implementations share the backward (dense d_gate; table gradient scatter-added in fp32). "auto" is XLA on
  every backend: its gather fuses with silu and the multiply already, and the Pallas kernel only pays once it is
  fused into the W_down GEMM prologue (kernels.md 5.4), which is not built yet.
  """
  check_implementation(implementation)
  if implementation == "cudnn":
    raise ValueError("implementation='cudnn' exists for attention only")
  return gated_lookup(table_VxF, ids, gate, use_pallas=implementation == "pallas")
