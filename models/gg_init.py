"""Generalized-Gaussian initialisation (gg_prior.md §3): W ~ GG(0, α, ν) with Var[W] = ξ/n for every shape ν.

α = sqrt((ξ/n)·Γ(1/ν)/Γ(3/ν)). n follows the reference code, which takes `shape[0]` of the PyTorch tensor: the
output features of a Linear (the last axis of a Flax kernel) and the vocabulary of an embedding table;
`fan_mode="fan_in"` uses the He fan-in instead.
"""
import math

import jax
import jax.numpy as jnp

FAN_MODES = ("reference", "fan_in")
KINDS = ("kernel", "embedding")


def fan_size(shape, fan_mode="reference", kind="kernel", in_ndim=1):
  """n of the variance rule. kernel: Flax layout (*inputs, *outputs) with `in_ndim` input axes, so n is the
  product of the output axes ("reference") or of the input axes ("fan_in"); embedding (V, d): V or d."""
  if fan_mode not in FAN_MODES or kind not in KINDS:
    raise ValueError(f"fan_mode in {FAN_MODES}, kind in {KINDS}; got {fan_mode!r}, {kind!r}")
  if len(shape) < 2:
    raise ValueError(f"GG init is for ≥ 2-D parameters (1-D: gains 1, biases 0); got shape {shape}")
  if kind == "embedding":
    return shape[0] if fan_mode == "reference" else math.prod(shape[1:])
  return math.prod(shape[in_ndim:]) if fan_mode == "reference" else math.prod(shape[:in_ndim])


def gg_scale(shape_nu, xi, n):
  """α = sqrt((ξ/n)·Γ(1/ν)/Γ(3/ν)), the GG scale with variance ξ/n."""
  return math.sqrt(xi / n * math.exp(math.lgamma(1 / shape_nu) - math.lgamma(3 / shape_nu)))


def gg_initializer(shape_nu=1.0, xi=2.0, fan_mode="reference", kind="kernel", in_ndim=1):
  """An `nnx.initializers`-style `init(key, shape, dtype)` drawing GG(0, α, ν) samples (fp32, then cast)."""
  def init(key, shape, dtype=jnp.float32):
    alpha = gg_scale(shape_nu, xi, fan_size(shape, fan_mode, kind, in_ndim))
    return (alpha * jax.random.generalized_normal(key, shape_nu, shape, jnp.float32)).astype(dtype)
  return init


def model_initializer(cfg, std=None, role="reads"):
  """`model.init="gg"` for the decoder zoo: GG init from `cfg.gg` for every weight (`std` is unused: the variance
  is ξ/n). `role` (tessera.models.layers): an "embedding" table has n = V; a kernel that "writes" the residual
  stream has every axis but the last as input (the (heads, head_dim, d_model) attention output: two); a kernel that
  "reads" it has one input axis."""
  del std
  gg = cfg.gg

  def init(key, shape, dtype=jnp.float32):
    kind = "embedding" if role == "embedding" else "kernel"
    in_ndim = len(shape) - 1 if role == "writes" else 1
    return gg_initializer(gg.shape, gg.xi, gg.fan_mode, kind, in_ndim)(key, shape, dtype)
  return init
