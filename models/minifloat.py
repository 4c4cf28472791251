"""8-bit floats (e4m3fn, e5m2) with a per-tensor power-of-two shift, encoded on the fp32 bit pattern.

Why integer arithmetic: XLA:CPU flushes fp32 subnormals, so float tricks (frexp, ldexp) are not exact at the
edges; rounding the fp32 significand with integer shifts gives the same codes on every backend. Rounding is to
nearest, ties to even, exactly as `ml_dtypes`; beyond the largest finite value we saturate (ml_dtypes gives
NaN or inf). The fp32 helpers here are shared with `rf8.py`. fp32 subnormal inputs count as zero.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class MiniFloat:
  """Layout of a sign | exponent | mantissa byte. `top_exp`/`top_sig`: the largest finite value is
  `top_sig · 2^(top_exp − man_bits)` (`top_sig` counts the implicit bit). `ieee_specials`: the top exponent
  field is inf/NaN (e5m2); otherwise only the all-ones code is NaN (e4m3fn)."""
  man_bits: int
  bias: int
  top_exp: int
  top_sig: int
  ieee_specials: bool
  shift_range: tuple[int, int]  # shifts whose whole value range stays normal fp32

  @property
  def min_exp(self):
    return 1 - self.bias


E4M3 = MiniFloat(man_bits=3, bias=7, top_exp=8, top_sig=14, ieee_specials=False, shift_range=(-117, 119))
E5M2 = MiniFloat(man_bits=2, bias=15, top_exp=15, top_sig=7, ieee_specials=True, shift_range=(-110, 112))


def f32_fields(x):
  """(sign bit, biased exponent field, significand with the implicit bit; 0 for zero/subnormal) of fp32 x."""
  bits = jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)
  sign = (bits >> 31).astype(jnp.uint8)
  exp_field = ((bits >> 23) & 0xFF).astype(jnp.int32)
  sig = jnp.where(exp_field > 0, (bits & 0x7FFFFF) | 0x800000, 0).astype(jnp.uint32)
  return sign, exp_field, sig


def pow2(e):
  """2^e as fp32 for integer e, exact; e is clipped to the normal range [−126, 127]."""
  e = jnp.clip(jnp.asarray(e, jnp.int32), -126, 127)
  return jax.lax.bitcast_convert_type(((e + 127) << 23).astype(jnp.uint32), jnp.float32)


def scale_pow2(x, n):
  """x · 2^n in two exact steps, so that n may exceed the range of one fp32 power of two."""
  n = jnp.asarray(n, jnp.int32)
  half = n // 2
  return x * pow2(half) * pow2(n - half)


def auto_shift(x, fmt):
  """Smallest t with max|x| ≤ max_finite · 2^t (max|x| lands in the top binade unless its significand exceeds
  the format's top one), over finite x; 0 for an all-zero tensor; clipped to `fmt.shift_range`."""
  absx = jnp.abs(jnp.asarray(x, jnp.float32))
  amax = jnp.max(jnp.where(jnp.isfinite(absx), absx, 0.0), initial=0.0)
  _, exp_field, sig = f32_fields(amax)
  over_top = sig > (fmt.top_sig << (23 - fmt.man_bits))
  t = exp_field - 127 - fmt.top_exp + over_top.astype(jnp.int32)
  t = jnp.where(exp_field > 0, t, 0)
  return jnp.clip(t, *fmt.shift_range).astype(jnp.int8)


def encode(x, fmt, shift):
  """uint8 codes of x / 2^shift, round-to-nearest-even, saturating; non-finite x → 0x00."""
  sign, exp_field, sig = f32_fields(x)
  t = jnp.asarray(shift, jnp.int32)
  floor_log2 = exp_field - 127
  e_scaled = jnp.maximum(floor_log2 - t, fmt.min_exp)  # binade of the scaled value (subnormal binade floor)
  # x = sig · 2^(floor_log2 − 23); quantum = 2^(e_scaled + t − man_bits); drop `drop` low bits of sig.
  drop = jnp.clip(e_scaled + t - fmt.man_bits - floor_log2 + 23, 1, 30).astype(jnp.uint32)
  m = sig >> drop
  rem = sig & ((jnp.uint32(1) << drop) - 1)
  half = jnp.uint32(1) << (drop - 1)
  m = m + ((rem > half) | ((rem == half) & ((m & 1) == 1))).astype(jnp.uint32)
  carry = m >= (1 << (fmt.man_bits + 1))
  e_scaled = jnp.where(carry, e_scaled + 1, e_scaled)
  m = jnp.where(carry, m >> 1, m)
  over = (e_scaled > fmt.top_exp) | ((e_scaled == fmt.top_exp) & (m > fmt.top_sig))
  e_scaled = jnp.where(over, fmt.top_exp, e_scaled)
  m = jnp.where(over, fmt.top_sig, m)
  normal = m >= (1 << fmt.man_bits)
  e_field = jnp.where(normal, e_scaled + fmt.bias, 0).astype(jnp.uint32)
  m_field = jnp.where(normal, m - (1 << fmt.man_bits), m)
  code = (sign.astype(jnp.uint32) << 7) | (e_field << fmt.man_bits) | m_field
  return jnp.where(exp_field < 255, code, 0).astype(jnp.uint8)


def code_values(fmt):
  """The 256 plain (shift 0) values as a NumPy fp32 table, from the layout alone (tests compare with ml_dtypes)."""
  codes = np.arange(256)
  sign = np.where(codes >> 7, -1.0, 1.0)
  e_field = (codes >> fmt.man_bits) & ((1 << (7 - fmt.man_bits)) - 1)
  m_field = codes & ((1 << fmt.man_bits) - 1)
  sig = np.where(e_field > 0, m_field + (1 << fmt.man_bits), m_field)
  exp = np.maximum(e_field - fmt.bias, fmt.min_exp) - fmt.man_bits
  values = np.ldexp(sig.astype(np.float64), exp)
  top_field = (1 << (7 - fmt.man_bits)) - 1
  if fmt.ieee_specials:
    values = np.where(e_field == top_field, np.where(m_field == 0, np.inf, np.nan), values)
  else:
    values = np.where((e_field == top_field) & (m_field == (1 << fmt.man_bits) - 1), np.nan, values)
  return np.copysign(values, sign).astype(np.float32)


def decode(codes, shift, fmt, dtype=jnp.float32):
  """Values of uint8 codes under `shift` via a 256-entry table."""
  lut = jnp.asarray(code_values(fmt))
  return scale_pow2(lut[jnp.asarray(codes).astype(jnp.int32)], shift).astype(dtype)
