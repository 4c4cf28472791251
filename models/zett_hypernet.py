"""The ZeTT hypernetwork body (zett.md §3.4-3.7): input projection, a RoBERTa-style post-LN encoder over the
surface-form pieces, pooling at position 0, separate input/output heads. No HF dependency: the RoBERTa layer is
re-implemented (post-LN, GELU FFN, learned absolute positions with RoBERTa's offset, one token-type row).

Init: N(0, 0.02) weights (RoBERTa's initializer_range), zero biases, unit LayerNorms. Dropout: none (the encoder
sees no held-out data problem at this size; project default, the paper's RoBERTa config has 0.1).
"""
import jax
import jax.numpy as jnp
from flax import nnx

INIT_STD = 0.02
LN_EPS = 1e-5
POSITION_OFFSET = 2  # RoBERTa: positions start at padding_idx + 1 = 2; row 1 is the padding position


def _normal(rngs, shape, axes):
  return nnx.Param(nnx.with_partitioning(nnx.initializers.normal(INIT_STD), axes)(rngs.params(), shape))


def _zeros(shape, axes):
  return nnx.Param(nnx.with_partitioning(nnx.initializers.zeros, axes)(None, shape))


class Dense(nnx.Module):
  def __init__(self, d_in, d_out, rngs, axes=("hn_in", "hn_out")):
    self.kernel = _normal(rngs, (d_in, d_out), axes)
    self.bias = _zeros((d_out,), axes[1:])

  def __call__(self, x_NxI):
    return x_NxI @ self.kernel[...] + self.bias[...]


class LayerNorm(nnx.Module):
  def __init__(self, d):
    self.scale = nnx.Param(nnx.with_partitioning(nnx.initializers.ones, ("norm",))(None, (d,)))
    self.bias = _zeros((d,), ("norm",))

  def __call__(self, x_NxD):
    mean_Nx1 = jnp.mean(x_NxD, -1, keepdims=True)
    var_Nx1 = jnp.var(x_NxD, -1, keepdims=True)
    return (x_NxD - mean_Nx1) * jax.lax.rsqrt(var_Nx1 + LN_EPS) * self.scale[...] + self.bias[...]


class ProjectorBlock(nnx.Module):
  """LayerNorm(x + gelu(W2 gelu(W1 x))) (§3.4; gelu also on the W2 output, as the official ProjectorBlock)."""

  def __init__(self, h, h_ff, rngs):
    self.w1, self.w2, self.norm = Dense(h, h_ff, rngs), Dense(h_ff, h, rngs), LayerNorm(h)

  def __call__(self, x_NxH):
    return self.norm(x_NxH + jax.nn.gelu(self.w2(jax.nn.gelu(self.w1(x_NxH), approximate=False)), approximate=False))


class EncoderLayer(nnx.Module):
  """RoBERTa layer: x = LN(x + Attn(x)); x = LN(x + W2 gelu(W1 x)) (post-LN), key-padding mask."""

  def __init__(self, h, h_ff, n_heads, rngs):
    self.n_heads = n_heads
    self.q, self.k, self.v, self.o = (Dense(h, h, rngs) for _ in range(4))
    self.attn_norm = LayerNorm(h)
    self.ff1, self.ff2, self.ff_norm = Dense(h, h_ff, rngs), Dense(h_ff, h, rngs), LayerNorm(h)

  def __call__(self, x_NxLxH, mask_NxL):
    N, L, H = x_NxLxH.shape
    split = lambda y: y.reshape(N, L, self.n_heads, H // self.n_heads)
    q, k, v = split(self.q(x_NxLxH)), split(self.k(x_NxLxH)), split(self.v(x_NxLxH))
    scores_NxHxLxL = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(H // self.n_heads).astype(x_NxLxH.dtype)
    scores_NxHxLxL = jnp.where(mask_NxL[:, None, None, :], scores_NxHxLxL, -1e9)
    attn_NxLxH = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(scores_NxHxLxL, -1), v).reshape(N, L, H)
    x_NxLxH = self.attn_norm(x_NxLxH + self.o(attn_NxLxH))
    return self.ff_norm(x_NxLxH + self.ff2(jax.nn.gelu(self.ff1(x_NxLxH), approximate=False)))


class Hypernet(nnx.Module):
  """rescaled source rows of each piece [N, L, S] -> (pooled z [N, h], hidden states [N, L, h])."""

  def __init__(self, src_dim, out_dim, zcfg, rngs):
    h, h_ff = zcfg.hidden, zcfg.ffn
    self.in_proj = Dense(src_dim, h, rngs)
    self.in_block = ProjectorBlock(h, h_ff, rngs)
    self.positions = _normal(rngs, (zcfg.maxlen + POSITION_OFFSET, h), (None, "hn_out"))
    self.token_type = _normal(rngs, (1, h), (None, "hn_out"))
    self.embed_norm = LayerNorm(h)
    self.layers = nnx.List([EncoderLayer(h, h_ff, zcfg.n_heads, rngs) for _ in range(zcfg.n_layers)])
    self.head_in = nnx.Dict(block=ProjectorBlock(h, h_ff, rngs), out=Dense(h, out_dim, rngs))
    self.head_out = nnx.Dict(block=ProjectorBlock(h, h_ff, rngs), out=Dense(h, out_dim, rngs))

  def encode(self, src_NxLxS, mask_NxL):
    """Hidden states after the encoder; `mask_NxL` False on padding pieces (position 0 is always on)."""
    x_NxLxH = self.in_block(self.in_proj(src_NxLxS))
    L = mask_NxL.shape[1]
    pos_NxL = jnp.where(mask_NxL, jnp.arange(L) + POSITION_OFFSET, POSITION_OFFSET - 1)
    x_NxLxH = x_NxLxH + jnp.take(self.positions[...], pos_NxL, axis=0) + self.token_type[...][0]
    x_NxLxH = self.embed_norm(x_NxLxH)
    for layer in self.layers:
      x_NxLxH = layer(x_NxLxH, mask_NxL)
    return x_NxLxH

  def heads(self, z_NxH):
    """(ê_in, ê_out) before the output rescaler (§3.7: separate heads for an untied LM)."""
    e_in = self.head_in["out"](self.head_in["block"](z_NxH))
    e_out = self.head_out["out"](self.head_out["block"](z_NxH))
    return e_in, e_out

  def __call__(self, src_NxLxS, mask_NxL):
    hidden_NxLxH = self.encode(src_NxLxS, mask_NxL)
    return self.heads(hidden_NxLxH[:, 0])  # §3.6: pooling = position 0, not a mean
