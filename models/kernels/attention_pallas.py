"""Flash attention as Pallas kernels: causal/positions, GQA, packed segments, keep masks, TRIM-KV retention.

Forward, dQ and dKV kernels (kernels.md 3.4-3.5) wrapped in a `jax.custom_vjp`, since `pallas_call` has no
reverse-mode rule. Written in the portable subset (ref indexing, `pl.ds`, `lax.fori_loop`, jnp math) so the same
code lowers through Triton on GPU and runs in interpret mode on CPU. Scores, softmax statistics, retention
exponents and `lse` (natural log) are fp32; P is cast to the value dtype before the PV product.

Layout: public BTHD; query head h reads KV head h // G. The dKV kernel owns one KV block of one KV head and loops
over the G query heads of its group, so dk, dv and d log_beta are written once, without atomics.
"""

import dataclasses
import functools

import jax
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.experimental import pallas as pl
import jax.numpy as jnp
import numpy as np

from tessera.models.kernels.attention_blocks import block_ranges, full_blocks, visible_blocks
from tessera.models.kernels.attention_inputs import canonical_inputs
from tessera.models.kernels.attention_tiles import (attend_block, kv_rows, logits, masked_probs, softmax_init,
                                                    visible_block_loop)
from tessera.models.kernels.backend import block_for, dot, pallas_interpret, round_up, triton_params


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes (powers of two) of the forward, dQ and dKV kernels, clipped to the sequence lengths; and the
  split-K decode kernel's KV tile and number of cache chunks (attention_decode)."""
  q: int = 128
  kv: int = 64
  dq_q: int = 64
  dq_kv: int = 64
  dkv_q: int = 64
  dkv_kv: int = 64
  decode_kv: int = 128
  decode_splits: int = 16


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything the kernels specialise on (hashable: it is the custom_vjp's non-differentiable argument)."""
  causal: bool
  scale: float
  retention_mode: str | None  # None: plain attention
  has_segments: bool
  has_keep: bool
  q_len: int  # unpadded T
  kv_len: int  # unpadded S
  groups: int  # G = H // K
  blocks: BlockSizes  # already clipped to the padded lengths
  interpret: bool
  head_dim: int  # padded D, for the warp count
  skip_full_masks: bool  # drop the mask on fully visible blocks (changes rounding only)


def _fwd_kernel(refs, o_ref, lse_ref, *, st):
  i = pl.program_id(2)
  q = refs["q"][...]
  q_seg = refs["q_seg"][...] if st.has_segments else None
  body = functools.partial(attend_block, st, refs, q, refs["q_pos"][...], q_seg, bk=st.blocks.kv)
  acc, m, l = visible_block_loop(refs["ranges"], i, body, softmax_init(q), st.skip_full_masks)
  seen = l > 0.0  # rows without any visible key output zeros
  safe_l = jnp.where(seen, l, 1.0)
  o_ref[...] = jnp.where(seen[:, None], acc / safe_l[:, None], 0.0).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log(safe_l), 0.0)


def _dq_kernel(refs, dq_ref, *, st):
  bk = st.blocks.dq_kv
  i = pl.program_id(2)
  q, do = refs["q"][...], refs["do"][...]
  lse, delta = refs["lse"][...], refs["delta"][...]
  q_pos = refs["q_pos"][...]
  q_seg = refs["q_seg"][...] if st.has_segments else None

  def body(j, dq, masked):
    rows = pl.ds(pl.multiple_of(j * bk, bk), bk)
    k, v = refs["k"][rows, :], refs["v"][rows, :]
    s, vis, _, a, _ = logits(st, q, k, q_pos, q_seg, *kv_rows(refs, st, rows), j * bk, bk, masked)
    p = masked_probs(vis, jnp.exp(s - lse[:, None]))
    ds = p * (dot(do, v, trans_b=True) - delta[:, None])
    dr = ds if a is None else ds * a  # d s / d raw = a in mul_logit mode
    return dq + dot(dr.astype(k.dtype), k)

  dq = visible_block_loop(refs["ranges"], i, body, jnp.zeros(q.shape, jnp.float32), st.skip_full_masks)
  dq_ref[...] = (dq * st.scale).astype(dq_ref.dtype)


def _dkv_kernel(refs, dk_ref, dv_ref, *dlb_ref, st):
  bq, bk = st.blocks.dkv_q, st.blocks.dkv_kv
  j = pl.program_id(2)
  k, v = refs["k"][...], refs["v"][...]
  k_pos = refs["kv_pos"][...]
  k_seg = refs["kv_seg"][...] if st.has_segments else None
  keep = refs["keep"][...] if st.has_keep else None
  lb = refs["lb"][...] if st.retention_mode is not None else None

  def q_block(g, i, carry, masked):
    dk, dv, dlb = carry
    rows = pl.ds(pl.multiple_of(i * bq, bq), bq)
    q, do = refs["q"][rows, g, :], refs["do"][rows, g, :]
    lse, delta = refs["lse"][g, rows], refs["delta"][g, rows]
    q_seg = refs["q_seg"][rows] if st.has_segments else None
    s, vis, raw, a, dist = logits(st, q, k, refs["q_pos"][rows], q_seg, k_pos, k_seg, keep, lb, j * bk, bk,
                                  masked)
    p = masked_probs(vis, jnp.exp(s - lse[:, None]))
    dv = dv + dot(p.astype(do.dtype), do, trans_a=True)
    ds = p * (dot(do, v, trans_b=True) - delta[:, None])
    dr = ds if a is None else ds * a
    if st.retention_mode == "mul_logit":  # d s / d lb = raw * a * dist
      dlb = dlb + (dr * raw * dist).sum(axis=0)
    elif st.retention_mode == "add_bias":  # d s / d lb = dist
      dlb = dlb + (ds * dist).sum(axis=0)
    dk = dk + dot(dr.astype(q.dtype), q, trans_a=True)
    return dk, dv, dlb

  def head(g, carry):
    return visible_block_loop(refs["ranges"], j, functools.partial(q_block, g), carry, st.skip_full_masks)

  init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32), jnp.zeros((bk,), jnp.float32))
  dk, dv, dlb = lax.fori_loop(0, st.groups, head, init)
  dk_ref[...] = (dk * st.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  if dlb_ref:
    dlb_ref[0][...] = dlb


def _vector_specs(st, inputs, q_block, kv_block, q_index, kv_index):
  """BlockSpecs of the position/segment/keep/log-beta vectors, keyed like the kernels' `refs` dict."""
  specs = {"q_pos": pl.BlockSpec((None, q_block), q_index), "kv_pos": pl.BlockSpec((None, None, kv_block), kv_index)}
  arrays = {"q_pos": inputs.q_pos_BxT, "kv_pos": inputs.kv_pos_BxKxS}
  if st.has_segments:
    specs["q_seg"] = pl.BlockSpec((None, q_block), q_index)
    specs["kv_seg"] = pl.BlockSpec((None, kv_block), lambda *g: kv_index(*g)[::2])  # [B, S]: drop the head
    arrays.update(q_seg=inputs.q_seg_BxT, kv_seg=inputs.kv_seg_BxS)
  if st.has_keep:
    specs["keep"] = pl.BlockSpec((None, None, kv_block), kv_index)
    arrays["keep"] = inputs.keep_BxKxS
  if st.retention_mode is not None:
    specs["lb"] = pl.BlockSpec((None, None, kv_block), kv_index)
    arrays["lb"] = inputs.log_beta_BxKxS
  return arrays, specs


def _ranges(st, inputs, block_q, block_kv, axis):
  """ranges_BxKx4xN for the kernels' loops over `axis` (3: KV blocks per q block, 2: q blocks per KV block)."""
  kw = dict(causal=st.causal, q_len=st.q_len, kv_len=st.kv_len, block_q=block_q, block_kv=block_kv)
  return block_ranges(visible_blocks(inputs, **kw), full_blocks(inputs, **kw) if st.skip_full_masks else None, axis)


def _forward(st, q, k, v, inputs):
  B, T, H, D = q.shape
  _, S, K, _ = k.shape
  G, bq = st.groups, st.blocks.q
  ranges = _ranges(st, inputs, bq, st.blocks.kv, axis=3)  # [B, K, 4, T/bq]
  arrays, specs = _vector_specs(st, inputs, bq, S, lambda b, h, i: (b, i), lambda b, h, i: (b, h // G, 0))
  arrays.update(q=q, k=k, v=v, ranges=ranges)
  specs.update(q=pl.BlockSpec((None, bq, None, D), lambda b, h, i: (b, i, h, 0)),
               k=pl.BlockSpec((None, S, None, D), lambda b, h, i: (b, 0, h // G, 0)),
               v=pl.BlockSpec((None, S, None, D), lambda b, h, i: (b, 0, h // G, 0)),
               ranges=pl.BlockSpec((None, None, 4, T // bq), lambda b, h, i: (b, h // G, 0, 0)))
  o, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, st=st), grid=(B, H, T // bq), in_specs=[specs],
      out_specs=[pl.BlockSpec((None, bq, None, D), lambda b, h, i: (b, i, h, 0)),
                 pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, H, T), jnp.float32)],
      compiler_params=triton_params(st.head_dim), interpret=st.interpret, name="tessera_attention_fwd",
  )(arrays)
  return checkpoint_name(o, "attention_out"), checkpoint_name(lse, "attention_lse")


def _backward_dq(st, q, k, v, inputs, do, lse, delta):
  B, T, H, D = q.shape
  _, S, K, _ = k.shape
  G, bq = st.groups, st.blocks.dq_q
  ranges = _ranges(st, inputs, bq, st.blocks.dq_kv, axis=3)
  arrays, specs = _vector_specs(st, inputs, bq, S, lambda b, h, i: (b, i), lambda b, h, i: (b, h // G, 0))
  arrays.update(q=q, k=k, v=v, do=do, lse=lse, delta=delta, ranges=ranges)
  q_tile = pl.BlockSpec((None, bq, None, D), lambda b, h, i: (b, i, h, 0))
  stat_tile = pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))
  specs.update(q=q_tile, do=q_tile, lse=stat_tile, delta=stat_tile,
               k=pl.BlockSpec((None, S, None, D), lambda b, h, i: (b, 0, h // G, 0)),
               v=pl.BlockSpec((None, S, None, D), lambda b, h, i: (b, 0, h // G, 0)),
               ranges=pl.BlockSpec((None, None, 4, T // bq), lambda b, h, i: (b, h // G, 0, 0)))
  return pl.pallas_call(
      functools.partial(_dq_kernel, st=st), grid=(B, H, T // bq), in_specs=[specs], out_specs=q_tile,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), compiler_params=triton_params(st.head_dim),
      interpret=st.interpret, name="tessera_attention_dq",
  )(arrays)


def _backward_dkv(st, q, k, v, inputs, do, lse, delta):
  B, T, H, D = q.shape
  _, S, K, _ = k.shape
  G, bk = st.groups, st.blocks.dkv_kv
  ranges = _ranges(st, inputs, st.blocks.dkv_q, bk, axis=2)  # [B, K, 4, S/bk]
  arrays, specs = _vector_specs(st, inputs, T, bk, lambda b, kh, j: (b, 0), lambda b, kh, j: (b, kh, j))
  # Free reshapes: query head h = kh * G + g, so a KV head's group is a contiguous [G] slice.
  arrays.update(q=q.reshape(B, T, K, G, D), do=do.reshape(B, T, K, G, D), lse=lse.reshape(B, K, G, T),
                delta=delta.reshape(B, K, G, T), k=k, v=v, ranges=ranges)
  group_rows = pl.BlockSpec((None, T, None, G, D), lambda b, kh, j: (b, 0, kh, 0, 0))
  group_stats = pl.BlockSpec((None, None, G, T), lambda b, kh, j: (b, kh, 0, 0))
  kv_tile = pl.BlockSpec((None, bk, None, D), lambda b, kh, j: (b, j, kh, 0))
  specs.update(q=group_rows, do=group_rows, lse=group_stats, delta=group_stats, k=kv_tile, v=kv_tile,
               ranges=pl.BlockSpec((None, None, 4, S // bk), lambda b, kh, j: (b, kh, 0, 0)))
  out_specs = [kv_tile, kv_tile]
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  if st.retention_mode is not None:
    out_specs.append(pl.BlockSpec((None, None, bk), lambda b, kh, j: (b, kh, j)))
    out_shape.append(jax.ShapeDtypeStruct((B, K, S), jnp.float32))
  grads = pl.pallas_call(
      functools.partial(_dkv_kernel, st=st), grid=(B, K, S // bk), in_specs=[specs], out_specs=out_specs,
      out_shape=out_shape, compiler_params=triton_params(st.head_dim), interpret=st.interpret,
      name="tessera_attention_dkv",
  )(arrays)
  return grads if st.retention_mode is not None else (*grads, None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(st, q, k, v, log_beta, inputs):
  o, _ = _forward(st, q, k, v, inputs._replace(log_beta_BxKxS=log_beta))
  return o


def _flash_fwd(st, q, k, v, log_beta, inputs):
  o, lse = _forward(st, q, k, v, inputs._replace(log_beta_BxKxS=log_beta))
  return o, (q, k, v, log_beta, inputs, o, lse)


def _flash_bwd(st, residuals, do):
  q, k, v, log_beta, inputs, o, lse = residuals
  inputs = inputs._replace(log_beta_BxKxS=log_beta)
  delta = jnp.einsum("bthd,bthd->bht", o.astype(jnp.float32), do.astype(jnp.float32))
  dq = _backward_dq(st, q, k, v, inputs, do, lse, delta)
  dk, dv, dlb = _backward_dkv(st, q, k, v, inputs, do, lse, delta)
  zeros = jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0), inputs._replace(log_beta_BxKxS=None))
  return dq, dk, dv, dlb, zeros


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pad_axis(x, axis, length, value=0):
  if x is None or x.shape[axis] == length:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def flash_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, *, causal=True, segment_ids=None, q_positions=None,
                    kv_positions=None, log_retention=None, retention_mode="mul_logit", keep=None, scale=None,
                    block_sizes=BlockSizes(), interpret=None, skip_full_masks=None):
  """The Pallas attention path; same contract as `attention_reference`. `interpret=None` picks it from the backend.

  `skip_full_masks` drops the mask computation on fully visible blocks (same result up to rounding). `None` turns it
  on for compiled kernels and off in interpret mode, where it only triples the code to trace (tests that check
  the skip turn it on explicitly).

  Lengths are padded to block multiples and the head dim to a power of two here (padded keys are masked
  statically, padded query rows are sliced off), so the kernels only ever see whole tiles.
  """
  inputs = canonical_inputs(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_ids=segment_ids, q_positions=q_positions,
                            kv_positions=kv_positions, log_retention=log_retention, keep=keep,
                            retention_mode=retention_mode)
  B, T, H, D = q_BxTxHxD.shape
  S, K = k_BxSxKxD.shape[1], k_BxSxKxD.shape[2]
  b = block_sizes
  blocks = BlockSizes(q=block_for(T, b.q), kv=block_for(S, b.kv), dq_q=block_for(T, b.dq_q),
                      dq_kv=block_for(S, b.dq_kv), dkv_q=block_for(T, b.dkv_q), dkv_kv=block_for(S, b.dkv_kv))
  T_pad = round_up(T, max(blocks.q, blocks.dq_q, blocks.dkv_q))
  S_pad = round_up(S, max(blocks.kv, blocks.dq_kv, blocks.dkv_kv))
  D_pad = block_for(D, 1 << 30)
  interpret = pallas_interpret() if interpret is None else interpret
  st = _Static(causal=causal, scale=float(D ** -0.5 if scale is None else scale),
               retention_mode=None if log_retention is None else retention_mode,
               has_segments=segment_ids is not None, has_keep=keep is not None, q_len=T, kv_len=S, groups=H // K,
               blocks=blocks, interpret=interpret, head_dim=D_pad,
               skip_full_masks=not interpret if skip_full_masks is None else skip_full_masks)
  q, k, v = (_pad_axis(_pad_axis(x, 3, D_pad), 1, n) for x, n in
             ((q_BxTxHxD, T_pad), (k_BxSxKxD, S_pad), (v_BxSxKxD, S_pad)))
  padded = inputs._replace(q_pos_BxT=_pad_axis(inputs.q_pos_BxT, 1, T_pad),
                           kv_pos_BxKxS=_pad_axis(inputs.kv_pos_BxKxS, 2, S_pad),
                           q_seg_BxT=_pad_axis(inputs.q_seg_BxT, 1, T_pad, -1),
                           kv_seg_BxS=_pad_axis(inputs.kv_seg_BxS, 1, S_pad, -1),
                           keep_BxKxS=_pad_axis(inputs.keep_BxKxS, 2, S_pad), log_beta_BxKxS=None)
  o = _flash(st, q, k, v, _pad_axis(inputs.log_beta_BxKxS, 2, S_pad), padded)
  return o[:, :T, :, :D]
