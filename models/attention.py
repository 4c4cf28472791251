"""Grouped-query self-attention with RoPE and packed-segment masking, plus its XLA reference."""

import jax
import jax.numpy as jnp
from flax import nnx

from tessera.models import layers

# Finite, so a fully masked row gives a uniform softmax instead of NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def dot_product_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, *, causal=True, segment_ids_BxT=None, scale=None):
  """softmax(q k^T * scale + mask) v with float32 logits and softmax; returns BxTxHxD in v's dtype.

  H must be a multiple of K: query head h reads kv head h // (H // K). Queries and keys share positions
  (self-attention), so `causal` keeps key s <= query t and `segment_ids_BxT` keeps keys of the query's segment;
  segment id 0 is an ordinary segment here (padding is masked by the loss, not by attention).
  """
  B, T, H, D = q_BxTxHxD.shape
  S, K = k_BxSxKxD.shape[1], k_BxSxKxD.shape[2]
  if H % K:
    raise ValueError(f"attention: {H} query heads are not a multiple of {K} kv heads")
  scale = D ** -0.5 if scale is None else scale
  q_BxTxKxGxD = q_BxTxHxD.reshape(B, T, K, H // K, D)
  logits_BxKxGxTxS = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxD, k_BxSxKxD,
                                preferred_element_type=jnp.float32) * scale
  mask_BxTxS = jnp.ones((1, T, S), dtype=bool)
  if causal:
    mask_BxTxS = mask_BxTxS & (jnp.arange(T)[:, None] >= jnp.arange(S)[None, :])
  if segment_ids_BxT is not None:
    mask_BxTxS = mask_BxTxS & (segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :])
  logits_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], logits_BxKxGxTxS, MASK_VALUE)
  probs_BxKxGxTxS = jax.nn.softmax(logits_BxKxGxTxS, axis=-1)
  out_BxTxKxGxD = jnp.einsum("bkgts,bskd->btkgd", probs_BxKxGxTxS.astype(v_BxSxKxD.dtype), v_BxSxKxD)
  return out_BxTxKxGxD.reshape(B, T, H, D)


def head_dim(cfg):
  """`model.head_dim`, where 0 means d_model // n_heads."""
  return cfg.head_dim or cfg.d_model // cfg.n_heads


def attend(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT, implementation):
  """Causal attention by `model.attention_impl`: "xla" is the reference above; other names go to the kernels."""
  if implementation == "xla":
    return dot_product_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, causal=True, segment_ids_BxT=segment_ids_BxT)
  if implementation == "xla_blocked":  # query blocks that skip later keys (CPU, issue 20)
    from tessera.models import attention_blocked
    return attention_blocked.attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT)
  from tessera.models import kernels  # lazy: kernels are optional (GPU/TPU) and must not burden the CPU path
  return kernels.attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, causal=True, segment_ids=segment_ids_BxT,
                           implementation=implementation)


def attend_cached(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, positions_BxT, cache, live_BxT, implementation,
                  token_scores_BxKxT=None):
  """Attention through a KV cache, by true positions and keep masks (kernels.attention); returns (out, cache).

  T == 1 is a decode step: the token is written to the cache (which may evict) and attends over what is kept.
  T > 1 is a prefill: the tokens attend over the cache plus themselves (each sees its whole prefix, as in
  training), then the cache keeps what its policy allows. `live_BxT` marks real tokens (prompt padding is not).
  `token_scores_BxKxT`: a per-token cache score from the model (kv_cache.register's "token" policies); an
  "attention" policy (H2O) also accumulates the attention probabilities (kv_cache.attention_mass).
  """
  from tessera.models import kernels, kv_cache  # lazy, as in `attend`
  implementation = "xla" if implementation == "xla_blocked" else implementation
  implementation = implementation if implementation in ("xla", "pallas") else "auto"  # cudnn: no keep masks
  if live_BxT is None:
    live_BxT = jnp.ones(positions_BxT.shape, bool)
  if q_BxTxHxD.shape[1] == 1:
    cache = kv_cache.append_one(cache, k_BxTxKxD, v_BxTxKxD, positions_BxT, live_BxT, token_scores_BxKxT)
    out_BxTxHxD = kernels.attention(q_BxTxHxD, cache.k_BxCxKxE, cache.v_BxCxKxE, causal=True,
                                    q_positions=positions_BxT, kv_positions=cache.positions_BxKxC,
                                    keep=cache.live_BxKxC(), implementation=implementation)
    return out_BxTxHxD, kv_cache.observe(cache, q_BxTxHxD, positions_BxT, live_BxT)
  k_BxNxKxD, v_BxNxKxD, pos_BxKxN, live_BxKxN = kv_cache.candidates(cache, k_BxTxKxD, v_BxTxKxD, positions_BxT,
                                                                    live_BxT)
  out_BxTxHxD = kernels.attention(q_BxTxHxD, k_BxNxKxD, v_BxNxKxD, causal=True, q_positions=positions_BxT,
                                  kv_positions=pos_BxKxN, keep=live_BxKxN, implementation=implementation)
  mass_BxKxN = None
  if cache.policy.score == "attention":
    mass_BxKxN = kv_cache.attention_mass(q_BxTxHxD, k_BxNxKxD, positions_BxT, pos_BxKxN, live_BxKxN, live_BxT)
  return out_BxTxHxD, kv_cache.merge(cache, k_BxNxKxD, v_BxNxKxD, pos_BxKxN, live_BxKxN, token_scores_BxKxT,
                                     mass_BxKxN)


class Attention(nnx.Module):
  """Llama self-attention: q/k/v projections per head, RoPE on q and k, grouped-query attention, output proj.

  Optional, each behind a model key whose default leaves the function unchanged (Hugging Face architectures):
  `qk_norm` (Qwen3: an RMSNorm over head_dim of every q and k head, before RoPE), `attn_bias` (biases on the
  q, k, v and o projections), `rope_scaling` (Llama 3 / linear frequency scaling, layers.rope_scaling).
  """

  def __init__(self, cfg, rngs):
    D, H, K, E = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, head_dim(cfg)
    self.dtype = jnp.dtype(cfg.dtype)
    self.rope_theta = cfg.rope_theta
    self.rope_scaling = layers.rope_scaling(cfg)
    self.implementation = cfg.attention_impl
    self.q = layers.param(cfg, rngs, (D, H, E), ("embed", "q_heads", "head_dim"))
    self.k = layers.param(cfg, rngs, (D, K, E), ("embed", "kv_heads", "head_dim"))
    self.v = layers.param(cfg, rngs, (D, K, E), ("embed", "kv_heads", "head_dim"))
    self.o = layers.param(cfg, rngs, (H, E, D), ("q_heads", "head_dim", "embed"), residual_out=True)
    self.qk_norm = bool(cfg.get("qk_norm", False))
    if self.qk_norm:
      self.q_norm, self.k_norm = layers.RMSNorm(cfg, E), layers.RMSNorm(cfg, E)
    self.attn_bias = bool(cfg.get("attn_bias", False))
    if self.attn_bias:
      self.q_bias = _zeros(cfg, (H, E), ("q_heads", "head_dim"))
      self.k_bias = _zeros(cfg, (K, E), ("kv_heads", "head_dim"))
      self.v_bias = _zeros(cfg, (K, E), ("kv_heads", "head_dim"))
      self.o_bias = _zeros(cfg, (D,), ("norm",))

  def _qkv(self, x_BxTxD, positions_BxT):
    """q, k, v after the optional bias and q/k norm, then RoPE on q and k."""
    x_BxTxD = x_BxTxD.astype(self.dtype)
    q_BxTxHxE = jnp.einsum("btd,dhe->bthe", x_BxTxD, self.q[...].astype(self.dtype))
    k_BxTxKxE = jnp.einsum("btd,dke->btke", x_BxTxD, self.k[...].astype(self.dtype))
    v_BxTxKxE = jnp.einsum("btd,dke->btke", x_BxTxD, self.v[...].astype(self.dtype))
    if self.attn_bias:
      q_BxTxHxE = q_BxTxHxE + self.q_bias[...].astype(self.dtype)
      k_BxTxKxE = k_BxTxKxE + self.k_bias[...].astype(self.dtype)
      v_BxTxKxE = v_BxTxKxE + self.v_bias[...].astype(self.dtype)
    if self.qk_norm:
      q_BxTxHxE, k_BxTxKxE = self.q_norm(q_BxTxHxE), self.k_norm(k_BxTxKxE)
    q_BxTxHxE = layers.apply_rope(q_BxTxHxE, positions_BxT, self.rope_theta, self.rope_scaling)
    k_BxTxKxE = layers.apply_rope(k_BxTxKxE, positions_BxT, self.rope_theta, self.rope_scaling)
    return q_BxTxHxE, k_BxTxKxE, v_BxTxKxE

  def _out(self, out_BxTxHxE):
    out_BxTxD = jnp.einsum("bthe,hed->btd", out_BxTxHxE, self.o[...].astype(self.dtype))
    if self.attn_bias:
      out_BxTxD = out_BxTxD + self.o_bias[...].astype(self.dtype)
    return out_BxTxD

  def __call__(self, x_BxTxD, segment_ids_BxT, positions_BxT, cache=None, live_BxT=None):
    """With `cache` (a kv_cache.LayerCache) returns (out, cache): see `attend_cached`."""
    q_BxTxHxE, k_BxTxKxE, v_BxTxKxE = self._qkv(x_BxTxD, positions_BxT)
    if cache is not None:
      out_BxTxHxE, cache = attend_cached(q_BxTxHxE, k_BxTxKxE, v_BxTxKxE, positions_BxT, cache, live_BxT,
                                         self.implementation)
      return self._out(out_BxTxHxE), cache
    out_BxTxHxE = attend(q_BxTxHxE, k_BxTxKxE, v_BxTxKxE, segment_ids_BxT, self.implementation)
    return self._out(out_BxTxHxE)


def _zeros(cfg, shape, logical_axes):
  """A zero-initialised bias in param_dtype (as torch.nn.Linear's would be after a zero init)."""
  init = nnx.with_partitioning(nnx.initializers.zeros, logical_axes)
  return nnx.Param(init(None, shape, jnp.dtype(cfg.param_dtype)))
