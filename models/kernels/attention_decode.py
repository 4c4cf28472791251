"""Split-K ("flash-decoding") attention for a few queries over a long KV cache (kernels.md 3.6).

One query token per (batch, KV head) gives a tile of G rows: a flash kernel would run one program per (b, head)
walking the whole cache. Here the cache is cut into `splits` contiguous chunks, one program per (b, KV head,
chunk) holding all T*G query rows of that KV head (rows r = t*G + g, padded to a power of two >= 16), each
returning an unnormalised partial (acc, running max m, normaliser l); XLA combines them.

Same contract as the flash path: positions, keep masks (evicted slots), the optional TRIM-KV retention term
(`log_retention` in either `retention_mode`), GQA, visibility skipping and full blocks without masks. Decode is
inference, so the backward is the XLA reference's (a custom_vjp): exact gradients, without a kernel.
"""

import dataclasses
import functools

import jax
from jax.experimental import pallas as pl
import jax.numpy as jnp
import numpy as np

from tessera.models.kernels.attention_blocks import block_ranges, full_blocks, visible_blocks
from tessera.models.kernels.attention_inputs import AttentionInputs, canonical_inputs
from tessera.models.kernels.attention_reference import attention_reference
from tessera.models.kernels.attention_tiles import attend_block, softmax_init, visible_block_loop
from tessera.models.kernels.backend import block_for, pallas_interpret, round_up, triton_params

MAX_DECODE_QUERIES = 16  # the dispatcher sends queries up to this length here


@dataclasses.dataclass(frozen=True)
class _Static:
  causal: bool
  scale: float
  retention_mode: str | None
  has_keep: bool
  kv_len: int  # unpadded cache length
  block_kv: int
  splits: int
  interpret: bool
  head_dim: int  # padded D
  skip_full_masks: bool
  has_segments: bool = False  # decode has no packed documents (attention_tiles reads it)


def _decode_kernel(refs, acc_ref, m_ref, l_ref, *, st):
  split = pl.program_id(2)
  q = refs["q"][...]
  split_len = refs["k"].shape[0]
  body = functools.partial(attend_block, st, refs, q, refs["q_pos"][...], None, bk=st.block_kv,
                           kv_offset=split * split_len)
  acc, m, l = visible_block_loop(refs["ranges"], split, body, softmax_init(q), st.skip_full_masks)
  acc_ref[...], m_ref[...], l_ref[...] = acc, m, l


def _partials(st, q_BxKxRxD, k, v, q_pos_BxR, kv_pos, keep, log_beta):
  """Per-split (acc [B,K,P,R,D], m [B,K,P,R], l [B,K,P,R]) from one pallas_call; inputs padded."""
  B, K, R, D = q_BxKxRxD.shape
  S = k.shape[1]
  chunk = S // st.splits
  inputs = AttentionInputs(q_pos_BxR, kv_pos, None, None, keep, None)
  kw = dict(causal=st.causal, q_len=R, kv_len=st.kv_len, block_q=R, block_kv=st.block_kv)
  vis, full = visible_blocks(inputs, **kw), full_blocks(inputs, **kw) if st.skip_full_masks else None
  per_split = lambda x: x if x is None else x.reshape(B, K, st.splits, chunk // st.block_kv)
  ranges = block_ranges(per_split(vis), per_split(full), axis=3)  # [B, K, 4, P], block indices within a split
  vector = pl.BlockSpec((None, None, chunk), lambda b, h, s: (b, h, s))
  arrays = dict(q=q_BxKxRxD, k=k, v=v, q_pos=q_pos_BxR, kv_pos=kv_pos, ranges=ranges)
  specs = dict(q=pl.BlockSpec((None, None, R, D), lambda b, h, s: (b, h, 0, 0)),
               k=pl.BlockSpec((None, chunk, None, D), lambda b, h, s: (b, s, h, 0)),
               v=pl.BlockSpec((None, chunk, None, D), lambda b, h, s: (b, s, h, 0)),
               q_pos=pl.BlockSpec((None, R), lambda b, h, s: (b, 0)), kv_pos=vector,
               ranges=pl.BlockSpec((None, None, 4, st.splits), lambda b, h, s: (b, h, 0, 0)))
  if st.has_keep:
    arrays["keep"], specs["keep"] = keep, vector
  if st.retention_mode is not None:
    arrays["lb"], specs["lb"] = log_beta, vector
  row_spec = pl.BlockSpec((None, None, None, R), lambda b, h, s: (b, h, s, 0))
  return pl.pallas_call(
      functools.partial(_decode_kernel, st=st), grid=(B, K, st.splits), in_specs=[specs],
      out_specs=[pl.BlockSpec((None, None, None, R, D), lambda b, h, s: (b, h, s, 0, 0)), row_spec, row_spec],
      out_shape=[jax.ShapeDtypeStruct((B, K, st.splits, R, D), jnp.float32),
                 jax.ShapeDtypeStruct((B, K, st.splits, R), jnp.float32),
                 jax.ShapeDtypeStruct((B, K, st.splits, R), jnp.float32)],
      compiler_params=triton_params(st.head_dim), interpret=st.interpret, name="tessera_attention_decode",
  )(arrays)


def combine_splits(acc_BxKxPxRxD, m_BxKxPxR, l_BxKxPxR):
  """Merge split-K partials: o = sum_p exp(m_p - M) acc_p / sum_p exp(m_p - M) l_p; rows that saw no key -> 0."""
  m_max = m_BxKxPxR.max(axis=2, keepdims=True)
  weight = jnp.exp(m_BxKxPxR - m_max)  # an empty split has l = 0 and acc = 0, whatever its m
  num = (weight[..., None] * acc_BxKxPxRxD).sum(axis=2)
  den = (weight * l_BxKxPxR).sum(axis=2)
  seen = den > 0.0
  return jnp.where(seen[..., None], num / jnp.where(seen, den, 1.0)[..., None], 0.0)


def _forward(st, q, k, v, log_beta, inputs):
  B, T, H, D = q.shape
  S, K = k.shape[1], k.shape[2]
  G = H // K
  rows = T * G
  R = block_for(rows, 1 << 30)
  D_pad = st.head_dim
  S_pad = round_up(S, st.block_kv * st.splits)
  # Query rows r = t * G + g of KV head kh; padded rows copy the last real row's position (never overflow a
  # retention exponent, never make a block partial) and are dropped after the combine.
  q_rows = q.reshape(B, T, K, G, D).transpose(0, 2, 1, 3, 4).reshape(B, K, rows, D)
  q_rows = jnp.pad(q_rows, ((0, 0), (0, 0), (0, R - rows), (0, D_pad - D)))
  q_pos = jnp.pad(jnp.repeat(inputs.q_pos_BxT, G, axis=1), ((0, 0), (0, R - rows)), mode="edge")
  pad_s = lambda x: None if x is None else jnp.pad(x, ((0, 0), (0, 0), (0, S_pad - S)))  # masked via kv_len
  pad_kv = lambda x: jnp.pad(x, ((0, 0), (0, S_pad - S), (0, 0), (0, D_pad - D)))
  acc, m, l = _partials(st, q_rows, pad_kv(k), pad_kv(v), q_pos, pad_s(inputs.kv_pos_BxKxS),
                        pad_s(inputs.keep_BxKxS), pad_s(log_beta))
  o = combine_splits(acc, m, l)[:, :, :rows, :D]  # [B, K, T*G, D]
  return o.reshape(B, K, T, G, D).transpose(0, 2, 1, 3, 4).reshape(B, T, H, D).astype(q.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _decode(st, q, k, v, log_beta, inputs):
  return _forward(st, q, k, v, log_beta, inputs)


def _decode_fwd(st, q, k, v, log_beta, inputs):
  return _forward(st, q, k, v, log_beta, inputs), (q, k, v, log_beta, inputs)


def _decode_bwd(st, residuals, do):
  q, k, v, log_beta, inputs = residuals

  def reference(q, k, v, log_beta):
    return attention_reference(q, k, v, causal=st.causal, q_positions=inputs.q_pos_BxT,
                               kv_positions=inputs.kv_pos_BxKxS, keep=inputs.keep_BxKxS, log_retention=log_beta,
                               retention_mode=st.retention_mode or "mul_logit", scale=st.scale)

  _, vjp = jax.vjp(reference, q, k, v, log_beta)
  zeros = jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0), inputs)
  return (*vjp(do), zeros)


_decode.defvjp(_decode_fwd, _decode_bwd)


def decode_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, *, causal=True, q_positions=None, kv_positions=None,
                     log_retention=None, retention_mode="mul_logit", keep=None, scale=None, block_kv=128,
                     splits=16, interpret=None, skip_full_masks=None):
  """Attention of T <= 16 queries over a cache [B, S, K, D]; the `attention` contract without segment ids.

  The cache is cut into min(splits, S / block_kv) chunks (padded; padded slots are masked). `skip_full_masks`
  as in `flash_attention` (None: on for compiled kernels, off in interpret mode).
  """
  B, T, H, D = q_BxTxHxD.shape
  S = k_BxSxKxD.shape[1]
  if T > MAX_DECODE_QUERIES:
    raise ValueError(f"decode_attention takes at most {MAX_DECODE_QUERIES} queries, got {T}: use flash_attention")
  inputs = canonical_inputs(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, q_positions=q_positions, kv_positions=kv_positions,
                            log_retention=log_retention, keep=keep, retention_mode=retention_mode)
  block_kv = block_for(S, block_kv)
  interpret = pallas_interpret() if interpret is None else interpret
  st = _Static(causal=causal, scale=float(D ** -0.5 if scale is None else scale),
               retention_mode=None if log_retention is None else retention_mode, has_keep=keep is not None,
               kv_len=S, block_kv=block_kv, splits=max(1, min(splits, -(-S // block_kv))), interpret=interpret,
               head_dim=block_for(D, 1 << 30),
               skip_full_masks=not interpret if skip_full_masks is None else skip_full_masks)
  log_beta = inputs.log_beta_BxKxS
  return _decode(st, q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, log_beta, inputs._replace(log_beta_BxKxS=None))
