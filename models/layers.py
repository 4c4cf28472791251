"""Llama building blocks: RMSNorm, rotary embeddings, SwiGLU MLP, and the kernel initializer dispatch.

Modules read the model config (`config.model`) once at construction and keep only plain Python scalars, so the
graphdef stays hashable. Params live in `param_dtype`; matmuls run in `dtype`; statistics run in float32.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from tessera.models import gg_init

class ModelState(nnx.Variable):
  """Model state that is not a parameter (an EMA copy, a running statistic): never differentiated, updated only by
  an objective's `after_update` inside the train step, kept in the train state's "model_state" and checkpointed.
  Give it logical axes like a Param (`ModelState(value, out_sharding=("embed", "mlp"))`) to shard it."""


# A weight's role, named where the module creates it (never guessed from shapes: V = F or V = d are common).
EMBEDDING = "embedding"          # a [V, d] table read by token id
READS_RESIDUAL = "reads"         # a kernel whose input is the residual stream (q/k/v, gate/up, unembedding)
WRITES_RESIDUAL = "writes"       # a kernel whose output is added to it (attention output [H, E, D], MLP down [F, D])


def lingua_init(cfg, std, role):
  """Lingua's default (used by STEM): truncated normal cut at 3 std, std = fan_in^-0.5, ignoring `init_std`.

  Embeddings and weights that read the residual stream get d_model^-0.5; those that write into it get (their input
  size)^-0.5, the product of every axis but the last.
  """
  del std

  def init(key, shape, dtype=jnp.float32):
    fan_in = math.prod(shape[:-1]) if role == WRITES_RESIDUAL else cfg.d_model
    return (fan_in ** -0.5 * jax.random.truncated_normal(key, -3.0, 3.0, shape, jnp.float32)).astype(dtype)
  return init


# Initializer families by `model.init`: (model config, stddev, role) -> jax initializer. A new family is one entry.
INITIALIZERS = {
  "normal": lambda cfg, std, role: nnx.initializers.normal(stddev=std),
  "lingua": lingua_init,
  "gg": gg_init.model_initializer,  # generalized Gaussian, Var = xi/n (gg_prior.md §3)
}


def kernel_init(cfg, logical_axes, *, residual_out=False, embedding=False):
  """Initializer for a weight with `logical_axes`, from `model.init` and `model.init_std`; `residual_out` and
  `embedding` name the weight's role (READS_RESIDUAL otherwise).

  Projections that write into the residual stream (attention output, MLP down) use std / sqrt(2 * n_layers)
  (GPT-2 / Megatron convention), so the residual stream's variance does not grow with depth.
  """
  if cfg.init not in INITIALIZERS:
    raise ValueError(f"model.init: unknown initializer {cfg.init!r}; known: {sorted(INITIALIZERS)}")
  role = EMBEDDING if embedding else WRITES_RESIDUAL if residual_out else READS_RESIDUAL
  std = cfg.init_std / math.sqrt(2 * cfg.n_layers) if residual_out else cfg.init_std
  return nnx.with_partitioning(INITIALIZERS[cfg.init](cfg, std, role), logical_axes)


def param(cfg, rngs, shape, logical_axes, *, residual_out=False, embedding=False):
  """An `nnx.Param` of `shape` in `param_dtype`, annotated with its logical axis names (role: kernel_init)."""
  init = kernel_init(cfg, logical_axes, residual_out=residual_out, embedding=embedding)
  return nnx.Param(init(rngs.params(), shape, jnp.dtype(cfg.param_dtype)))


class RMSNorm(nnx.Module):
  """Root-mean-square norm (no mean subtraction, no bias); statistics in float32 for bf16 stability."""

  def __init__(self, cfg, dim=None):
    """`dim` defaults to d_model (the residual stream); Qwen3's q/k norms pass head_dim."""
    self.eps = cfg.norm_eps
    self.dtype = jnp.dtype(cfg.dtype)
    ones = nnx.with_partitioning(nnx.initializers.ones, ("norm",))
    self.scale = nnx.Param(ones(None, (dim or cfg.d_model,), jnp.dtype(cfg.param_dtype)))

  def __call__(self, x_BxTxD):
    x_BxTxD = x_BxTxD.astype(jnp.float32)
    mean_square_BxTx1 = jnp.mean(jnp.square(x_BxTxD), axis=-1, keepdims=True)
    y_BxTxD = x_BxTxD * jax.lax.rsqrt(mean_square_BxTx1 + self.eps)
    return (y_BxTxD * self.scale[...].astype(jnp.float32)).astype(self.dtype)


ROPE_SCALINGS = ("none", "linear", "llama3")


def rope_scaling(cfg):
  """`model.rope_scaling` and its parameters as one hashable tuple for `apply_rope` (None: plain RoPE).

  Read with defaults, so a config saved before these keys existed builds the same model.
  """
  kind = cfg.get("rope_scaling", "none")
  if kind == "none":
    return None
  return (kind, float(cfg.get("rope_factor", 1.0)), float(cfg.get("rope_low_freq_factor", 1.0)),
          float(cfg.get("rope_high_freq_factor", 4.0)), float(cfg.get("rope_original_max_len", 8192)))


def scaled_inv_freq(inv_freq_F, scaling):
  """Hugging Face's rope scalings of the inverse frequencies (modeling_rope_utils): "linear" divides them all by
  `factor` (= positions / factor); "llama3" divides only the long wavelengths (> original_len / low_freq_factor)
  and interpolates smoothly up to the short ones (< original_len / high_freq_factor), which stay as they are."""
  kind, factor, low, high, original_len = scaling
  if kind == "linear":
    return inv_freq_F / factor
  wavelen_F = 2 * math.pi / inv_freq_F
  by_factor_F = jnp.where(wavelen_F > original_len / low, inv_freq_F / factor, inv_freq_F)
  smooth_F = (original_len / wavelen_F - low) / (high - low)
  smoothed_F = (1 - smooth_F) * by_factor_F / factor + smooth_F * by_factor_F
  medium_F = ~(wavelen_F < original_len / high) & ~(wavelen_F > original_len / low)
  return jnp.where(medium_F, smoothed_F, by_factor_F)


def apply_rope(x_BxTxHxD, positions_BxT, theta, scaling=None):
  """Rotates channel pairs (i, i + D/2) by angle position * theta^(-2i/D) (Llama / MaxText half-split layout, the
  same as Hugging Face's rotate_half); `scaling` (from `rope_scaling`) rescales the frequencies (Llama 3).

  Positions are explicit so packed documents restart at 0. Angles and the rotation run in float32.
  """
  half = x_BxTxHxD.shape[-1] // 2
  inv_freq_F = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if scaling is not None:
    inv_freq_F = scaled_inv_freq(inv_freq_F, scaling)
  angle_BxTx1xF = (positions_BxT.astype(jnp.float32)[:, :, None] * inv_freq_F)[:, :, None, :]
  sin, cos = jnp.sin(angle_BxTx1xF), jnp.cos(angle_BxTx1xF)
  x1, x2 = jnp.split(x_BxTxHxD.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxTxHxD.dtype)


class SwiGLU(nnx.Module):
  """down(silu(x @ gate) * (x @ up)) — the Llama MLP."""

  def __init__(self, cfg, rngs):
    self.dtype = jnp.dtype(cfg.dtype)
    self.gate = param(cfg, rngs, (cfg.d_model, cfg.d_ff), ("embed", "mlp"))
    self.up = param(cfg, rngs, (cfg.d_model, cfg.d_ff), ("embed", "mlp"))
    self.down = param(cfg, rngs, (cfg.d_ff, cfg.d_model), ("mlp", "embed"), residual_out=True)

  def __call__(self, x_BxTxD):
    x_BxTxD = x_BxTxD.astype(self.dtype)
    gate_BxTxF = x_BxTxD @ self.gate[...].astype(self.dtype)
    up_BxTxF = x_BxTxD @ self.up[...].astype(self.dtype)
    return (jax.nn.silu(gate_BxTxF) * up_BxTxF) @ self.down[...].astype(self.dtype)


class GeluMLP(nnx.Module):
  """down(gelu(x @ up)) — the two-matrix GPT-2 / nanodo MLP (tanh approximation), so reference shapes can run at
  exactly a plain trainer's math (`model.mlp="gelu"`)."""

  def __init__(self, cfg, rngs):
    self.dtype = jnp.dtype(cfg.dtype)
    self.up = param(cfg, rngs, (cfg.d_model, cfg.d_ff), ("embed", "mlp"))
    self.down = param(cfg, rngs, (cfg.d_ff, cfg.d_model), ("mlp", "embed"), residual_out=True)

  def __call__(self, x_BxTxD):
    x_BxTxD = x_BxTxD.astype(self.dtype)
    up_BxTxF = x_BxTxD @ self.up[...].astype(self.dtype)
    return jax.nn.gelu(up_BxTxF, approximate=True) @ self.down[...].astype(self.dtype)


# model.mlp -> (the MLP module, its number of [D, F] matrices for FLOP and parameter accounting).
MLPS = {"swiglu": (SwiGLU, 3), "gelu": (GeluMLP, 2)}


def mlp_kind(cfg):
  """`model.mlp`, read with a default so configs saved before the key build the same SwiGLU model."""
  kind = cfg.get("mlp", "swiglu")
  if kind not in MLPS:
    raise ValueError(f"config key 'model.mlp': {kind!r} is not one of {list(MLPS)}")
  return kind


def make_mlp(cfg, rngs):
  """The dense MLP that `model.mlp` names."""
  return MLPS[mlp_kind(cfg)][0](cfg, rngs)
