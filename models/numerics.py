"""Weight number formats as uint8 codes plus one int8 power-of-two shift per tensor: value = plain(code) · 2^shift.

Formats: "rf8" (gg_prior.md §8), "e4m3" (= ml_dtypes float8_e4m3fn) and "e5m2" (= ml_dtypes float8_e5m2).
With shift 0 the 8-bit floats agree bit for bit with ml_dtypes wherever ml_dtypes gives a finite value; beyond
that range they saturate. Non-finite inputs raise on the host; under jit they encode to 0x00 (count them with
`jnp.sum(~jnp.isfinite(w))` if that matters, e.g. the `rf8_nonfinite` metric).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from tessera.models import minifloat, rf8

MINIFLOATS = {"e4m3": minifloat.E4M3, "e5m2": minifloat.E5M2}
FORMATS = ("rf8", *MINIFLOATS)
rf8_round = jax.jit(rf8.rf8_round)


def _check_format(fmt):
  if fmt not in FORMATS:
    raise ValueError(f"unknown number format {fmt!r}; known: {FORMATS}")


@functools.partial(jax.jit, static_argnums=1)
def _encode(x, fmt, shift):
  _check_format(fmt)
  if fmt == "rf8":
    shift = rf8.auto_shift(x) if shift is None else jnp.asarray(shift, jnp.int8)
    return rf8.encode(x, shift), shift
  layout = MINIFLOATS[fmt]
  shift = minifloat.auto_shift(x, layout) if shift is None else jnp.asarray(shift, jnp.int8)
  return minifloat.encode(x, layout, shift), shift


def encode(x, fmt, shift=None):
  """(codes uint8 like x, shift int8). shift=None picks it: rf8 §8.2 (t = round(log2 max|x|)); e4m3/e5m2 the
  smallest t with max|x| ≤ max_finite · 2^t. Host inputs must be finite (ValueError otherwise)."""
  if not isinstance(x, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(x, np.float32))):
    raise ValueError(f"encode({fmt!r}): input has non-finite values")
  return _encode(x, fmt, shift)


@functools.partial(jax.jit, static_argnums=(2, 3))
def decode(codes, shift, fmt, dtype=jnp.float32):
  """Values of `codes` under `shift` in `dtype` (every RF8/e4m3/e5m2 value is exact in bf16 and fp32)."""
  _check_format(fmt)
  if fmt == "rf8":
    return rf8.decode(codes, shift, dtype)
  return minifloat.decode(codes, shift, MINIFLOATS[fmt], dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def fake_quant(x, fmt):
  """decode(encode(x)) with a per-tensor automatic shift; the gradient passes straight through (identity).
  Non-finite values pass through unchanged so that a diverging run still shows NaN/inf."""
  codes, shift = _encode(x, fmt, None)
  return jnp.where(jnp.isfinite(x), decode(codes, shift, fmt, x.dtype), x)


def _fake_quant_fwd(x, fmt):
  return fake_quant(x, fmt), None


def _fake_quant_bwd(fmt, _, grad):
  return (grad,)


fake_quant.defvjp(_fake_quant_fwd, _fake_quant_bwd)
