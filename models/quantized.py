"""8-bit weights in a params tree: stored as codes (`model.weight_format`) or fake-quantised (`model.fake_quant`).

A stored tree keeps the float tree's structure with every ≥ 2-D leaf (kernels, embeddings) replaced by
{"codes": uint8 of the weight's shape, "shift": int8 scalar} (gg_prior.md §8.2, tessera.models.numerics); 1-D
leaves (norm gains, biases) stay float. `float_params` turns either form back into the float tree the model
merges, inside the jitted step, so the decode fuses into the consumer.
"""
import jax
import jax.numpy as jnp
import numpy as np

from tessera.models import numerics

FLOAT, NONE = "float", "none"
WEIGHT_FORMATS = (FLOAT, *numerics.FORMATS)
FAKE_QUANT = (NONE, *numerics.FORMATS)


def quantizable(w):
  return len(np.shape(w)) >= 2


def is_code_leaf(x):
  return isinstance(x, dict) and set(x) == {"codes", "shift"}


def encode_tree(params, fmt):
  """Float tree -> stored tree (per-tensor automatic shift)."""
  def encode(w):
    if not quantizable(w):
      return w
    codes, shift = numerics.encode(w, fmt)
    return {"codes": codes, "shift": shift}
  return jax.tree.map(encode, params)


def nonfinite_count(params):
  """How many inputs of the quantizable leaves are NaN or ±inf: inside jit they encode to 0x00 (gg_prior.md §8.2),
  so this count (`rf8_nonfinite` in scripts/quantize's summary) is how a silent zero becomes visible."""
  counts = [jnp.sum(~jnp.isfinite(w)) for w in jax.tree.leaves(params) if quantizable(w)]
  return sum(counts, jnp.zeros((), jnp.int32))


def decode_tree(stored, fmt, dtype):
  """Stored tree -> float tree in `dtype` (the model's param dtype)."""
  return jax.tree.map(lambda x: numerics.decode(x["codes"], x["shift"], fmt, dtype) if is_code_leaf(x) else x,
                      stored, is_leaf=is_code_leaf)


def stored_abstract(abstract_params, param_shardings, replicated):
  """(ShapeDtypeStructs, shardings) of the stored tree: codes keep their weight's sharding, shifts replicate."""
  def shape(a):
    if not quantizable(a):
      return a
    return {"codes": jax.ShapeDtypeStruct(a.shape, jnp.uint8), "shift": jax.ShapeDtypeStruct((), jnp.int8)}

  def sharding(a, s):
    return {"codes": s, "shift": replicated} if quantizable(a) else s

  return jax.tree.map(shape, abstract_params), jax.tree.map(sharding, abstract_params, param_shardings)


def float_params(cfg, params):
  """The float tree the model runs on: decoded codes (weight_format), fake-quantised weights with a straight-through
  gradient (fake_quant), or `params` itself (the defaults)."""
  weight_format, fake_quant = cfg.get("weight_format", FLOAT), cfg.get("fake_quant", NONE)
  if weight_format != FLOAT:
    return decode_tree(params, weight_format, jnp.dtype(cfg.param_dtype))
  if fake_quant != NONE:
    return jax.tree.map(lambda w: numerics.fake_quant(w, fake_quant) if quantizable(w) else w, params)
  return params


def relative_rmse(params, fmt):
  """sqrt(Σ(w − q(w))² / Σw²) pooled over the ≥ 2-D leaves (host, float64 sums)."""
  error_sq = total_sq = 0.0
  for w in jax.tree.leaves(params):
    if quantizable(w):
      w32 = np.asarray(w, np.float32)
      codes, shift = numerics.encode(w32, fmt)
      q = np.asarray(numerics.decode(codes, shift, fmt), np.float64)
      error_sq += float(np.sum((w32 - q) ** 2))
      total_sq += float(np.sum(w32.astype(np.float64) ** 2))
  return float(np.sqrt(error_sq / total_sq))
