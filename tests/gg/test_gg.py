"""GG initialisation, shape estimation and rate metrics: gg_prior.md §3, §4, §7 (acceptance checks 1–3)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tessera.models import gg_init, gg_shape

DELTA = 2.0 ** -13


def _gg_samples(nu, n, seed):
  """GG(0, 1, ν) via |w| = G^(1/ν), G ~ Gamma(1/ν) (NumPy: far faster than compiling a JAX gamma sampler)."""
  rng = np.random.default_rng(seed)
  return (rng.gamma(1 / nu, size=n) ** (1 / nu) * rng.choice([-1.0, 1.0], n)).astype(np.float32)


def _kurtosis(w):
  w = np.asarray(w, np.float64)
  return np.mean(w ** 4) / np.mean(w ** 2) ** 2


@pytest.mark.parametrize("nu, kurtosis, tolerance", [(0.5, 25.2, 0.15), (1.0, 6.0, 0.03), (2.0, 3.0, 0.01)])
def test_sampler_variance_and_kurtosis(nu, kurtosis, tolerance):
  init = gg_init.gg_initializer(nu, xi=2.0, fan_mode="reference")
  w = np.asarray(init(jax.random.key(0), (3907, 256)))  # ≈ 1e6 samples, n = out features = 256
  assert abs(np.var(w) / (2.0 / 256) - 1) < 0.01
  assert abs(_kurtosis(w) / kurtosis - 1) < tolerance


def test_fan_size_follows_reference_layout():
  assert gg_init.fan_size((64, 256)) == 256  # nnx.Linear kernel (in, out): n = out
  assert gg_init.fan_size((64, 256), "fan_in") == 64
  assert gg_init.fan_size((1000, 32), kind="embedding") == 1000  # nnx.Embed (V, d): n = V
  assert gg_init.fan_size((1000, 32), "fan_in", kind="embedding") == 32
  assert gg_init.fan_size((64, 4, 16), in_ndim=1) == 64 and gg_init.fan_size((4, 16, 64), in_ndim=2) == 64
  with pytest.raises(ValueError, match="≥ 2-D"):
    gg_init.fan_size((64,))
  with pytest.raises(ValueError, match="fan_mode"):
    gg_init.fan_size((64, 8), "fan_avg")


def test_gg_scale_gives_variance_xi_over_n():
  for nu in (0.5, 1.0, 2.0):
    alpha = gg_init.gg_scale(nu, 2.0, 256)
    variance = alpha ** 2 * math.gamma(3 / nu) / math.gamma(1 / nu)
    assert math.isclose(variance, 2.0 / 256, rel_tol=1e-12)
  assert math.isclose(gg_init.gg_scale(2.0, 1.0, 1), math.sqrt(2.0))  # ν = 2: σ = α/√2


def test_initializer_in_nnx_keeps_partitioning_and_dtype():
  init = nnx.with_partitioning(gg_init.gg_initializer(1.0, 2.0), ("embed", "mlp"))
  with nnx.use_eager_sharding(False):
    layer = nnx.Linear(16, 512, kernel_init=init, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert layer.kernel.get_metadata()["out_sharding"] == ("embed", "mlp")
  assert layer.kernel[...].dtype == jnp.bfloat16
  assert abs(float(jnp.var(layer.kernel[...].astype(jnp.float32))) / (2.0 / 512) - 1) < 0.1


def test_moment_ratio_table():
  grid = list(np.round(gg_shape.NU_GRID, 2))
  assert len(grid) == 290 and grid[0] == 0.10 and grid[-1] == 2.99
  for nu, rho in ((2.0, math.pi / 2), (1.0, 2.0), (0.5, 10 / 3)):
    assert math.isclose(gg_shape.RHO_TABLE[grid.index(nu)], rho, rel_tol=1e-5)
  assert np.all(np.diff(gg_shape.RHO_TABLE) < 0)


@pytest.mark.parametrize("nu", [0.5, 1.0, 1.5, 2.0])
def test_estimator_recovers_shape_and_scale(nu):
  w = 0.02 * _gg_samples(nu, 1_000_000, seed=1)
  nu_hat, beta_hat = jax.jit(gg_shape.estimate_shape)(w)
  assert abs(float(nu_hat) - nu) <= 0.05
  assert abs(float(beta_hat) / 0.02 - 1) < 0.05
  assert float(gg_shape.estimate_shape(3.7 * w)[0]) == float(nu_hat)


def test_estimator_pools_and_clamps():
  params = {"kernel": _gg_samples(1.0, 90_000, seed=2).reshape(300, 300), "bias": _gg_samples(2.0, 20_000, seed=3)}
  assert gg_shape.moment_sums(params)[2] == 110_000 and gg_shape.moment_sums(params, "matrices")[2] == 90_000
  nu_matrices = float(gg_shape.estimate_shape(params, pool="matrices")[0])
  nu_all = float(gg_shape.estimate_shape(params)[0])
  assert abs(nu_matrices - 1.0) <= 0.05 and nu_all < nu_matrices  # a scale mixture is peakier
  spike = jnp.zeros(1000).at[0].set(1.0)  # ρ̂ = 1000, beyond the grid
  assert float(gg_shape.estimate_shape(spike)[0]) == pytest.approx(0.10)
  assert float(gg_shape.estimate_shape(jnp.ones(10))[0]) == pytest.approx(2.99)


def test_rate_metrics_on_a_known_histogram():
  w = {"a": np.float32([0, DELTA, -DELTA, 2 * DELTA]), "b": np.float32([[0.4 * DELTA, -0.6 * DELTA]])}
  metrics = gg_shape.rate_metrics(w)  # k = 0, 1, −1, 2, 0, −1
  p = np.array([2, 2, 1, 1]) / 6
  assert metrics["entropy_bits"] == pytest.approx(-np.sum(p * np.log2(p)))
  assert metrics["expgolomb_bits"] == pytest.approx((1 + 3 + 3 + 5 + 1 + 3) / 6)
  assert metrics["sparsity"] == pytest.approx(2 / 6)
  assert metrics["ratio_fp32"] == pytest.approx(32 * 6 / 16)
  assert gg_shape.weight_entropy_bits(w, pool="matrices") == pytest.approx(1.0)
