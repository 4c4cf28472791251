"""Llama-style decoder LM (pre-norm RMSNorm, RoPE, grouped-query attention, SwiGLU or `model.mlp="gelu"`), registered
as "decoder".

With `model.scan_layers` the blocks are built by `nnx.vmap` (params stacked on a leading "layers" axis) and run
by `jax.lax.scan`: one block is compiled once, whatever the depth. Unrolled and scanned runs compute the same
function of the same params; `model.remat` wraps each block in `jax.checkpoint` either way.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from tessera.models import registry
from tessera.models.attention import Attention, head_dim
from tessera.models import layers
from tessera.models.layers import RMSNorm, param

# model.remat -> which activations a block keeps for the backward pass (None: no checkpoint at all).
REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Block(nnx.Module):
  """x + attn(norm(x)), then x + mlp(norm(x)); the residual stream stays in the compute dtype (as in MaxText)."""

  def __init__(self, cfg, rngs, make_mlp=None):
    """`make_mlp(cfg, rngs)` builds the FFN (default: the dense MLP `model.mlp` names)."""
    self.attn_norm = RMSNorm(cfg)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg)
    self.mlp = (make_mlp or layers.make_mlp)(cfg, rngs)

  def __call__(self, x_BxTxD, segment_ids_BxT, positions_BxT, *mlp_args, cache=None, live_BxT=None):
    """`mlp_args` go to the FFN after its input (STEM's lookup ids); the dense SwiGLU takes none.
    With `cache` (this layer's kv_cache.LayerCache) returns (x, cache)."""
    if cache is None:
      x_BxTxD = x_BxTxD + self.attn(self.attn_norm(x_BxTxD), segment_ids_BxT, positions_BxT)
      return x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD), *mlp_args)
    h_BxTxD, cache = self.attn(self.attn_norm(x_BxTxD), segment_ids_BxT, positions_BxT, cache, live_BxT)
    x_BxTxD = x_BxTxD + h_BxTxD
    return x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD), *mlp_args), cache


def _stacked_blocks(cfg, rngs):
  """n_layers Blocks whose params carry a leading "layers" axis (one rng split per layer)."""
  @nnx.split_rngs(splits=cfg.n_layers)
  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make(rngs):
    return Block(cfg, rngs)
  return make(rngs)


class Decoder(nnx.Module):
  """tokens_BxT -> float32 logits_BxTxV."""

  def __init__(self, cfg, rngs):
    if cfg.remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat: unknown policy {cfg.remat!r}; known: {sorted(REMAT_POLICIES)}")
    layers.mlp_kind(cfg)  # an unknown model.mlp fails here, before any param is built
    if cfg.n_heads % cfg.n_kv_heads:
      raise ValueError(f"model.n_heads={cfg.n_heads} must be a multiple of model.n_kv_heads={cfg.n_kv_heads}")
    self.dtype = jnp.dtype(cfg.dtype)
    self.remat = cfg.remat
    self.scan_layers = cfg.scan_layers
    self.tie_embeddings = cfg.tie_embeddings
    self.n_layers, self.n_kv_heads, self.head_dim = cfg.n_layers, cfg.n_kv_heads, head_dim(cfg)  # cache shapes
    self.embed = param(cfg, rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), embedding=True)
    self.blocks = self._make_blocks(cfg, rngs)
    self.final_norm = RMSNorm(cfg)
    if not cfg.tie_embeddings:
      self.unembed = param(cfg, rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"))

  def _make_blocks(self, cfg, rngs):
    """The block stack; a subclass with other FFNs overrides this (and passes their inputs as `mlp_args`)."""
    if cfg.scan_layers:
      return _stacked_blocks(cfg, rngs)
    return nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])

  def __call__(self, tokens_BxT, *, segment_ids_BxT=None, positions_BxT=None, cache=None, live_BxT=None):
    """`positions_BxT` defaults to arange(T) per row; with packing pass per-document positions (restart at 0).

    With `cache` (from `init_cache`) returns (logits, cache): T == 1 decodes one token per row at its true position,
    T > 1 prefills (`live_BxT` False marks padding after a shorter prompt). tessera.models.generate drives this.
    """
    return self._forward(tokens_BxT, segment_ids_BxT, positions_BxT, cache=cache, live_BxT=live_BxT)

  def hidden_and_unembedding(self, tokens_BxT, *, segment_ids_BxT=None, positions_BxT=None):
    """(final-normed hidden states x_BxTxD, unembedding w_VxD), both in the compute dtype: logits = x @ w.T as
    __call__ makes them, for a loss that fuses the head (tessera.losses.fused_cross_entropy)."""
    if type(self).__call__ is not Decoder.__call__:
      raise ValueError(f"config key 'loss.fused_ce_chunk': {type(self).__name__} has its own forward pass; the fused "
                       "head runs on the plain decoder only (set it to 0)")
    x_BxTxD = self._forward(tokens_BxT, segment_ids_BxT, positions_BxT, head=False)
    if self.tie_embeddings:
      return x_BxTxD, self.embed[...].astype(self.dtype)
    return x_BxTxD, self.unembed[...].astype(self.dtype).T

  def init_cache(self, batch, policy):
    """An empty kv_cache.KVCache for `batch` rows under a `resolve`d kv_cache.Policy (call inside jit)."""
    from tessera.models import kv_cache
    return kv_cache.init(policy, batch, self.n_layers, self.n_kv_heads, self.head_dim, self.dtype,
                         stacked=self.scan_layers)

  def _forward(self, tokens_BxT, segment_ids_BxT, positions_BxT, *mlp_args, cache=None, live_BxT=None, head=True):
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    x_BxTxD = jnp.take(self.embed[...], tokens_BxT, axis=0).astype(self.dtype)
    if cache is not None:
      x_BxTxD, cache = self._run_blocks_cached(x_BxTxD, positions_BxT, cache, live_BxT, *mlp_args)
      return self._logits(x_BxTxD), cache
    x_BxTxD = self._run_blocks(x_BxTxD, segment_ids_BxT, positions_BxT, *mlp_args)
    return self._logits(x_BxTxD) if head else self.final_norm(x_BxTxD)

  def _logits(self, x_BxTxD):
    x_BxTxD = self.final_norm(x_BxTxD)
    if self.tie_embeddings:
      return jnp.einsum("btd,vd->btv", x_BxTxD, self.embed[...].astype(self.dtype),
                        preferred_element_type=jnp.float32)
    return jnp.einsum("btd,dv->btv", x_BxTxD, self.unembed[...].astype(self.dtype),
                      preferred_element_type=jnp.float32)

  def _run_blocks_cached(self, x_BxTxD, positions_BxT, cache, live_BxT, *mlp_args):
    """The blocks over a KV cache (inference: no remat); a scanned stack scans over its stacked cache."""
    if self.scan_layers:
      graphdef, stacked_state = nnx.split(self.blocks)

      def body(x_BxTxD, state_and_layer):
        state, layer = state_and_layer
        return nnx.merge(graphdef, state)(x_BxTxD, None, positions_BxT, *mlp_args, cache=layer, live_BxT=live_BxT)

      x_BxTxD, layers = jax.lax.scan(body, x_BxTxD, (stacked_state, cache.layers))
      return x_BxTxD, cache.replace(layers=layers)
    layers = []
    for block, layer in zip(self.blocks, cache.layers):
      x_BxTxD, layer = block(x_BxTxD, None, positions_BxT, *mlp_args, cache=layer, live_BxT=live_BxT)
      layers.append(layer)
    return x_BxTxD, cache.replace(layers=tuple(layers))

  def _run_blocks(self, x_BxTxD, segment_ids_BxT, positions_BxT, *mlp_args):
    """Applies the blocks functionally (split/merge), so remat and scan are plain JAX transforms."""
    def block_fn(graphdef):
      def apply(x_BxTxD, state):
        return nnx.merge(graphdef, state)(x_BxTxD, segment_ids_BxT, positions_BxT, *mlp_args)
      if self.remat == "none":
        return apply
      # Inside scan the loop already stops XLA merging recomputation into the forward pass (jax.checkpoint docs).
      return jax.checkpoint(apply, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan_layers)

    if self.scan_layers:
      graphdef, stacked_state = nnx.split(self.blocks)
      apply = block_fn(graphdef)
      x_BxTxD, _ = jax.lax.scan(lambda x_BxTxD, state: (apply(x_BxTxD, state), None), x_BxTxD, stacked_state)
      return x_BxTxD
    for block in self.blocks:
      graphdef, state = nnx.split(block)
      x_BxTxD = block_fn(graphdef)(x_BxTxD, state)
    return x_BxTxD


@registry.register("decoder")
def build(cfg, rngs: nnx.Rngs) -> Decoder:
  """The trainer's entry point: `cfg` is `config.model`."""
  return Decoder(cfg, rngs)


def _layer_matmul_params(cfg):
  """Weights of one block's matmuls: q, k, v, o projections and the MLP's matrices (3 SwiGLU, 2 GELU)."""
  attn = cfg.d_model * head_dim(cfg) * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
  return attn + layers.MLPS[layers.mlp_kind(cfg)][1] * cfg.d_model * cfg.d_ff


def param_count(cfg):
  """Parameter counts from the config alone (no arrays).

  "embedding" counts the vocabulary matrices: the input table, plus the unembedding when it is untied;
  "non_embedding" is everything else (block matmuls, all RMSNorm scales, attention biases).
  """
  embedding = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
  norms = (2 * cfg.n_layers + 1) * cfg.d_model
  if cfg.get("qk_norm", False):
    norms += 2 * cfg.n_layers * head_dim(cfg)
  if cfg.get("attn_bias", False):
    norms += cfg.n_layers * (head_dim(cfg) * (cfg.n_heads + 2 * cfg.n_kv_heads) + cfg.d_model)  # q, k, v, o biases
  non_embedding = cfg.n_layers * _layer_matmul_params(cfg) + norms
  return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding}


def train_flops_per_token(cfg, seq_len):
  """Training FLOPs per token, PaLM convention (Chowdhery et al. 2022, appendix B), as used for MFU.

  6 * (block matmul params + unembedding matmul d_model * vocab) for forward + backward matmuls, plus
  12 * n_layers * seq_len * n_heads * head_dim for the attention scores and values. The attention term counts the
  full TxT matrix (no causal halving, unlike recent MaxText); norms, softmax, activations and the embedding
  gather are not counted.
  """
  matmul_params = cfg.n_layers * _layer_matmul_params(cfg) + cfg.d_model * cfg.vocab_size
  attention = 12 * cfg.n_layers * seq_len * cfg.n_heads * head_dim(cfg)
  return float(6 * matmul_params + attention)


@registry.accounting("decoder")
def accounting(cfg, seq_len):
  counts = param_count(cfg)
  return {"params_total": counts["total"], "params_non_embedding": counts["non_embedding"],
          "train_flops_per_token": train_flops_per_token(cfg, seq_len)}
