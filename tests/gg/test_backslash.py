"""BackSlash rate step: gg_prior.md §5 closed forms and acceptance check 4."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tessera.losses import backslash
from tessera.models import gg_shape


def _weights(n=1000, seed=0):
  w = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
  w[:10] = 0.0
  return jnp.asarray(w)


def test_step_with_nu_one_is_constant_l1_shrinkage():
  w = _weights()
  new, metrics = backslash.backslash_step({"w": w}, lam=5.0, nu=1.0)
  shrink = np.float32(5.0) / np.float32(1000)
  np.testing.assert_array_equal(np.asarray(new["w"]), np.asarray(w) - shrink * np.sign(np.asarray(w)))
  assert np.all(np.asarray(new["w"])[:10] == 0)  # sign(0) = 0: zeros stay zero
  assert float(metrics["shrink"]) == shrink and float(metrics["nu_hat"]) == 1.0


def test_step_with_nu_two_is_linear_in_magnitude():
  w = _weights()
  new, _ = backslash.backslash_step({"w": w}, lam=5.0, nu=2.0)
  expected_update = -(2 * 5.0 / 1000) * np.sign(np.asarray(w)) * (np.abs(np.asarray(w)) + 1)
  np.testing.assert_allclose(np.asarray(new["w"]) - np.asarray(w), expected_update, rtol=1e-4, atol=1e-9)


def test_step_uses_the_pooled_estimate_and_scope():
  params = {"kernel": _weights(900).reshape(30, 30), "scale": jnp.ones(100)}
  new, metrics = jax.jit(lambda p: backslash.backslash_step(p, lam=2.0, pool="matrices"))(params)
  nu_hat, beta_hat = gg_shape.estimate_shape(params, "matrices")
  assert float(metrics["nu_hat"]) == float(nu_hat) and float(metrics["beta_hat"]) == float(beta_hat)
  assert float(metrics["shrink"]) == pytest.approx(2.0 * float(nu_hat) / 900)
  np.testing.assert_array_equal(np.asarray(new["scale"]), 1.0)  # outside the "matrices" pool
  assert not np.array_equal(np.asarray(new["kernel"]), np.asarray(params["kernel"]))
  frozen, _ = backslash.backslash_step(params, lam=2.0, active=jnp.bool_(False))
  np.testing.assert_array_equal(np.asarray(frozen["kernel"]), np.asarray(params["kernel"]))


def test_schedule_and_default_lambda():
  assert bool(backslash.backslash_active(749, 1000)) and not bool(backslash.backslash_active(750, 1000))
  assert backslash.default_lam(1.24e6) == pytest.approx(20.0)  # same per-weight push as 2e3 at 1.24e8
  assert backslash.default_lam(5e8) == 2e3


def test_repeated_steps_sharpen_the_distribution():
  w = jnp.asarray(np.random.default_rng(1).standard_normal(100_000).astype(np.float32))

  @jax.jit
  def twenty_steps(w):
    return jax.lax.fori_loop(0, 20, lambda _, v: backslash.backslash_step(v, lam=100.0)[0], w)

  nus, entropies = [float(gg_shape.estimate_shape(w)[0])], [gg_shape.weight_entropy_bits(w)]
  for _ in range(10):
    w = twenty_steps(w)
    nus.append(float(gg_shape.estimate_shape(w)[0]))
    entropies.append(gg_shape.weight_entropy_bits(w))
  assert np.all(np.diff(nus) < 0) and np.all(np.diff(entropies) < 0)
  assert nus[0] == pytest.approx(1.99, abs=0.02) and nus[-1] == pytest.approx(0.93, abs=0.05)
  assert entropies[0] == pytest.approx(14.7, abs=0.1) and entropies[-1] == pytest.approx(12.9, abs=0.15)
