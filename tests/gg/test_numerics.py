"""RF8 and 8-bit float codecs: gg_prior.md §8 acceptance checks 6–7 and bit-exact agreement with ml_dtypes."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from tessera.models import numerics, rf8

ML_DTYPES = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}
CODES = np.arange(256, dtype=np.uint8)
RF8_BINADE = [1.0, 1.0625, 1.125, 1.25, 1.5, 1.75, 1.875]


def _reference_values(fmt):
  return CODES.view(ML_DTYPES[fmt]).astype(np.float32)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_minifloat_decode_and_roundtrip_all_codes(fmt):
  ref = _reference_values(fmt)
  ours = np.asarray(numerics.decode(CODES, 0, fmt))
  np.testing.assert_array_equal(ours, ref)  # NaNs in the same places
  assert np.array_equal(np.signbit(ours), np.signbit(ref))
  finite = np.isfinite(ref)
  codes, shift = numerics.encode(ref[finite], fmt, shift=0)
  np.testing.assert_array_equal(np.asarray(codes), CODES[finite])
  assert shift.dtype == jnp.int8 and int(shift) == 0


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_minifloat_encode_matches_ml_dtypes_bit_for_bit(fmt):
  rng = np.random.default_rng(0)
  finite = np.sort(np.unique(np.abs(_reference_values(fmt)[np.isfinite(_reference_values(fmt))])))
  ties = (finite[:-1] + finite[1:]) / 2  # exact in fp32; ml_dtypes rounds them to even
  near_ties = np.concatenate([np.nextafter(ties, 0), np.nextafter(ties, np.inf)])
  random = np.ldexp(rng.uniform(0.5, 1.0, 200_000), rng.integers(-24, 18, 200_000)).astype(np.float32)
  fp32_subnormals = np.float32([1e-40, 1e-45, 5e-39])
  x = np.concatenate([ties, near_ties, random, fp32_subnormals, [0.0]]).astype(np.float32)
  x = np.concatenate([x, -x])
  expected = x.astype(ML_DTYPES[fmt])
  representable = np.isfinite(expected.astype(np.float32))
  codes = np.asarray(jax.jit(lambda v: numerics.encode(v, fmt, 0)[0])(x))
  np.testing.assert_array_equal(codes[representable], expected.view(np.uint8)[representable])
  top = np.max(finite)
  beyond = np.abs(x) > top
  assert beyond.any()
  np.testing.assert_array_equal(np.asarray(numerics.decode(codes[beyond], 0, fmt)), np.copysign(top, x[beyond]))


@pytest.mark.parametrize("fmt, top", [("e4m3", 448.0), ("e5m2", 57344.0)])
def test_minifloat_shift(fmt, top):
  x = (np.random.default_rng(1).standard_normal(1000) * 0.02).astype(np.float32)
  codes, shift = numerics.encode(x, fmt)
  amax = np.abs(x).max()
  assert amax <= top * 2.0 ** int(shift) < 2 * amax  # the smallest non-saturating shift
  scaled_codes, _ = numerics.encode(np.ldexp(x, -int(shift)), fmt, shift=0)
  np.testing.assert_array_equal(np.asarray(codes), np.asarray(scaled_codes))
  np.testing.assert_array_equal(np.asarray(numerics.decode(codes, shift, fmt)),
                                np.ldexp(np.asarray(numerics.decode(codes, 0, fmt)), int(shift)))


def test_nonfinite_rejected_on_host_and_zeroed_under_jit():
  x = np.float32([1.0, np.nan, -np.inf, 2.0])
  for fmt in numerics.FORMATS:
    with pytest.raises(ValueError, match="non-finite"):
      numerics.encode(x, fmt)
    codes, _ = jax.jit(lambda v, f=fmt: numerics.encode(v, f))(x)
    assert np.asarray(codes)[1] == 0 and np.asarray(codes)[2] == 0 and np.asarray(codes)[0] != 0
  with pytest.raises(ValueError, match="unknown number format"):
    numerics.encode(x[:1], "e3m4")


def _log_uniform(n, seed=0):
  rng = np.random.default_rng(seed)
  return (np.exp2(rng.uniform(-10, 10, n)) * rng.choice([-1.0, 1.0], n)).astype(np.float32)


def test_rf8_value_function_invariants():
  w = _log_uniform(1_000_000)
  v = np.asarray(jax.jit(numerics.rf8_round)(w))
  np.testing.assert_array_equal(np.asarray(numerics.rf8_round(v)), v)  # idempotent
  np.testing.assert_array_equal(np.asarray(numerics.rf8_round(-w)), -v)  # odd
  for k in (-3, 5):
    np.testing.assert_array_equal(np.asarray(numerics.rf8_round(np.ldexp(w, k))), np.ldexp(v, k))
  leading = np.exp2(np.floor(np.log2(np.abs(v))))
  np.testing.assert_array_equal(np.unique(np.abs(v) / leading), RF8_BINADE)
  p1 = np.copysign(np.ldexp(np.float32(1), np.asarray(rf8.round_log2(np.abs(v)))), v)
  assert np.all(np.abs(v - p1) <= np.abs(p1) / 2)  # e1 − e2 ≥ 1
  relative_error = np.abs(v - w) / np.abs(w)
  assert 0.105 < relative_error.max() < 0.109
  assert 0.123 < np.mean((v == p1) & (w != v)) < 0.133  # residual dropped (e1 − e2 > 4)
  x = _log_uniform(1_000_000, seed=1)
  np.testing.assert_array_equal(x * p1 + x * (v - p1), x * v)  # two power-of-two products and one add
  assert float(numerics.rf8_round(np.float32(0.0))) == 0.0


def test_rf8_codes_roundtrip():
  e_code, r_code = CODES >> 3 & 15, CODES & 7
  canonical = (e_code >= 1) & ~((r_code == 1) & (e_code < 15))
  assert canonical.sum() == 212
  for shift in (0, -9, 6):
    values = numerics.decode(CODES, shift, "rf8")
    codes, _ = numerics.encode(values, "rf8", shift=shift)
    np.testing.assert_array_equal(np.asarray(codes)[canonical], CODES[canonical])
    np.testing.assert_array_equal(np.asarray(numerics.decode(codes, shift, "rf8")), np.asarray(values))
  plain = np.asarray(numerics.decode(CODES, 0, "rf8"))
  assert len(np.unique(np.abs(plain[plain != 0]))) == 106
  assert np.signbit(plain[0x80]) and plain[0x80] == 0 and plain[0x79] == 1.5 and plain[0x7F] == 1 - 1 / 16
  for shift in (-111, -20, 0, 7, 100):
    np.testing.assert_array_equal(np.asarray(rf8.decode_bit_assembly(CODES, shift)),
                                  np.asarray(numerics.decode(CODES, shift, "rf8")))


def test_rf8_encode_decode_equals_value_function_in_range():
  w = np.random.default_rng(2).standard_normal(1_000_000).astype(np.float32)
  codes, shift = jax.jit(lambda v: numerics.encode(v, "rf8"))(w)
  t = int(shift)
  assert t == round(np.log2(np.abs(w).max()))
  unbounded = np.asarray(numerics.rf8_round(w))
  smallest = 0.75 * 2.0 ** (t - 14)
  expected = np.where(np.abs(unbounded) >= smallest, unbounded, 0.0)
  assert 0 < np.mean(expected == 0) < 1e-3
  np.testing.assert_array_equal(np.asarray(numerics.decode(codes, shift, "rf8")), expected)


def test_rf8_edge_cases():
  # 1.45 and 100 saturate to 1.5·2^t; 0.69·2^-14 has E = 0 but R = 1 and is kept as (E=1, R=3); 0.6·2^-14 flushes.
  x = np.float32([0.0, -0.0, 1.45, 100.0, -100.0, 0.74 * 2.0 ** -14, 0.69 * 2.0 ** -14, 0.6 * 2.0 ** -14])
  codes, _ = numerics.encode(x, "rf8", shift=0)
  assert [hex(c) for c in np.asarray(codes)] == ["0x0", "0x0", "0x79", "0x79", "0xf9", "0xb", "0xb", "0x0"]
  np.testing.assert_array_equal(np.asarray(numerics.decode(codes, 0, "rf8")),
                                [0, 0, 1.5, 1.5, -1.5, 0.75 * 2.0 ** -14, 0.75 * 2.0 ** -14, 0])
  assert int(numerics.encode(np.zeros(3, np.float32), "rf8")[1]) == 0


@pytest.mark.parametrize("fmt", numerics.FORMATS)
def test_fake_quant_forward_and_straight_through_gradient(fmt):
  x = jnp.asarray(np.random.default_rng(3).standard_normal(64).astype(np.float32) * 0.05)
  forward = jax.jit(numerics.fake_quant, static_argnums=1)(x, fmt)
  np.testing.assert_array_equal(np.asarray(forward), np.asarray(numerics.decode(*numerics.encode(x, fmt), fmt)))
  weights = jnp.arange(64, dtype=jnp.float32)
  grad = jax.grad(lambda v: jnp.sum(numerics.fake_quant(v, fmt) * weights))(x)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(weights))
  with_nan = numerics.fake_quant(x.at[0].set(jnp.nan), fmt)
  assert np.isnan(with_nan[0]) and np.all(np.isfinite(with_nan[1:]))


def test_nonfinite_inputs_encode_to_zero_in_jit_and_are_counted():
  from tessera.models import quantized
  w = jnp.array([[0.5, jnp.nan], [jnp.inf, -0.25]], jnp.float32)
  codes, _ = jax.jit(lambda x: numerics.encode(x, "rf8"))(w)
  assert int(codes[0, 1]) == 0 and int(codes[1, 0]) == 0 and int(codes[0, 0]) != 0
  assert int(jax.jit(quantized.nonfinite_count)({"w": w, "bias": jnp.array([jnp.nan])})) == 2  # 1-D not quantized
