"""RF8, the 8-bit residual float of the GG-prior paper (gg_prior.md §8): values, codes, decoders.

A value is a power of two plus at most one smaller signed power of two (≤ 4 binades below), found greedily with
rounding in log2 space. Byte = s | EEEE | RRR (§8.2, a project decision): E = 0 is zero, otherwise
value = (−1)^s · 2^(E − 15 + t) · (1 + ρ[R]) with a per-tensor int8 shift t. Works in fp32 (other dtypes are
cast); `round(log2|w|)` is taken exactly from the bit pattern (|w| ≥ √2·2^e), never through a float log.
"""
import fractions

import jax
import jax.numpy as jnp
import numpy as np

from tessera.models.minifloat import f32_fields, pow2, scale_pow2

RHO = (0.0, 1 / 2, 1 / 4, -1 / 4, 1 / 8, -1 / 8, 1 / 16, -1 / 16)
MAX_GAP = 4           # the residual is kept only if e1 − e2 ≤ 4
SHIFT_RANGE = (-111, 127)  # shifts whose whole value range (0.75·2^(t−14) … 1.5·2^t) stays normal fp32


def _sqrt2_mantissa():
  """23-bit mantissa field of the smallest fp32 above √2 (√2 is irrational, so no fp32 equals it)."""
  candidate = np.float32(np.sqrt(2.0))
  if fractions.Fraction(float(candidate)) ** 2 < 2:
    candidate = np.nextafter(candidate, np.float32(2.0))
  return int(candidate.view(np.uint32)) & 0x7FFFFF


_SQRT2_MANTISSA = _sqrt2_mantissa()


def round_log2(a):
  """round(log2 a) for normal fp32 a > 0, exactly (ties cannot occur)."""
  _, exp_field, sig = f32_fields(a)
  return exp_field - 127 + ((sig & 0x7FFFFF) >= _SQRT2_MANTISSA).astype(jnp.int32)


def _terms(mag):
  """Greedy expansion of |w| (fp32, normal > 0): (e1, e2, residual kept, residual negative)."""
  e1 = round_log2(mag)
  residual = mag - pow2(e1)  # exact: mag ∈ [2^(e1−½), 2^(e1+½)) (Sterbenz)
  _, r_exp_field, _ = f32_fields(residual)
  e2 = round_log2(jnp.abs(residual))
  keep = (r_exp_field > 0) & (e1 - e2 <= MAX_GAP)
  return e1, e2, keep, residual < 0


def rf8_round(x):
  """The unbounded RF8 value of §8.1 (no exponent range, no shift); 0 ↦ 0 and non-finite values pass through."""
  x32 = jnp.asarray(x, jnp.float32)
  mag = jnp.abs(x32)
  e1, e2, keep, negative = _terms(mag)
  p2 = jnp.where(keep, jnp.where(negative, -pow2(e2), pow2(e2)), 0.0)
  value = jnp.copysign(pow2(e1) + p2, x32)  # exact: ≤ 5 significant bits
  _, exp_field, _ = f32_fields(x32)
  return jnp.where((exp_field > 0) & (exp_field < 255), value, x32).astype(jnp.asarray(x).dtype)


def auto_shift(x):
  """t = round(log2 max|w|) over finite non-zero w (§8.2); 0 for an all-zero tensor; clipped to SHIFT_RANGE."""
  mag = jnp.abs(jnp.asarray(x, jnp.float32))
  amax = jnp.max(jnp.where(jnp.isfinite(mag), mag, 0.0), initial=0.0)
  _, exp_field, _ = f32_fields(amax)
  t = jnp.where(exp_field > 0, round_log2(amax), 0)
  return jnp.clip(t, *SHIFT_RANGE).astype(jnp.int8)


def encode(x, shift):
  """uint8 codes of §8.2: saturate above 1.5·2^t, canonical R=1 only at E=15, flush to 0x00 below 0.75·2^(t−14)
  (and for ±0, fp32 subnormals and non-finite values)."""
  sign, exp_field, _ = f32_fields(x)
  t = jnp.asarray(shift, jnp.int32)
  e1, e2, keep, negative = _terms(jnp.abs(jnp.asarray(x, jnp.float32)))
  gap = e1 - e2
  r_code = jnp.where(gap == 1, 1, 2 * gap - 2 + negative.astype(jnp.int32))
  r_code = jnp.where(keep, r_code, 0)
  saturated = e1 > t
  e_code = jnp.where(saturated, 15, e1 - t + 15)
  r_code = jnp.where(saturated, 1, r_code)
  to_canonical = (r_code == 1) & (e_code < 15)  # 1.5·2^e is written as 0.75·2^(e+1)
  e_code = jnp.where(to_canonical, e_code + 1, e_code)
  r_code = jnp.where(to_canonical, 3, r_code)
  nonzero = (e_code >= 1) & (exp_field > 0) & (exp_field < 255)
  code = (sign.astype(jnp.int32) << 7) | (jnp.clip(e_code, 0, 15) << 3) | r_code
  return jnp.where(nonzero, code, 0).astype(jnp.uint8)


def code_values():
  """The 256 plain (t = 0) values as a NumPy fp32 table; 0x80 is −0."""
  codes = np.arange(256)
  sign = np.where(codes >> 7, -1.0, 1.0)
  e_code = (codes >> 3) & 15
  values = np.ldexp(1.0 + np.asarray(RHO)[codes & 7], e_code - 15)
  return (sign * np.where(e_code > 0, values, 0.0)).astype(np.float32)


def decode(codes, shift, dtype=jnp.float32):
  """Values of codes under shift t: a 256-entry table scaled by 2^t."""
  lut = jnp.asarray(code_values())
  return scale_pow2(lut[jnp.asarray(codes).astype(jnp.int32)], shift).astype(dtype)


def decode_bit_assembly(codes, shift, dtype=jnp.float32):
  """Same values as `decode`, built as fp32 bits (exponent E − 15 + t) times 1 + ρ[R]: the table-free form a
  fused kernel would use. Needs E − 15 + t within the normal fp32 exponents, as SHIFT_RANGE guarantees."""
  codes = jnp.asarray(codes).astype(jnp.uint32)
  e_code = (codes >> 3) & 15
  exponent = (e_code.astype(jnp.int32) - 15 + jnp.asarray(shift, jnp.int32) + 127).astype(jnp.uint32)
  bits = ((codes >> 7) << 31) | jnp.where(e_code > 0, exponent << 23, 0)
  power = jax.lax.bitcast_convert_type(bits, jnp.float32)
  return (power * jnp.asarray(np.asarray(RHO, np.float32) + 1)[codes & 7]).astype(dtype)
