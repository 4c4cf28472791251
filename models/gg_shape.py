"""Generalized-Gaussian shape estimation (gg_prior.md §4) and rate metrics of quantised weights (§7).

ν̂ comes from the moment ratio ρ̂ = N·Σw²/(Σ|w|)² looked up in a 290-entry table of ρ(ν) on ν = 0.10 … 2.99.
The sums are tree reductions, so the estimate is jit-able and correct under sharding. Tables are NumPy (built
once on the host in float64, stored float32) so that importing this module never starts a JAX backend.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

NU_GRID = np.round(0.10 + 0.01 * np.arange(290), 2)
POOLS = ("all", "matrices")
QUANT_STEP = 2.0 ** -13


def moment_ratio(nu):
  """ρ(ν) = Γ(1/ν)Γ(3/ν)/Γ(2/ν)² = E[w²]/E[|w|]² of a GG with shape ν (host, float64)."""
  return math.exp(math.lgamma(1 / nu) + math.lgamma(3 / nu) - 2 * math.lgamma(2 / nu))


def scale_per_std(nu):
  """β/σ = sqrt(Γ(1/ν)/Γ(3/ν)) of a GG with shape ν (host, float64)."""
  return math.exp(0.5 * (math.lgamma(1 / nu) - math.lgamma(3 / nu)))


RHO_TABLE = np.array([moment_ratio(nu) for nu in NU_GRID], np.float32)
SCALE_TABLE = np.array([scale_per_std(nu) for nu in NU_GRID], np.float32)


def in_pool(w, pool):
  """Whether leaf w belongs to the pool: "all" parameters (reference) or "matrices" (≥ 2-D only)."""
  if pool not in POOLS:
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
  return pool == "all" or jnp.ndim(w) >= 2


def moment_sums(params, pool="all"):
  """(Σw², Σ|w|, N) over the pooled leaves of a pytree (or one array); N is a Python int (static)."""
  leaves = [jnp.asarray(w, jnp.float32) for w in jax.tree.leaves(params) if in_pool(w, pool)]
  sum_sq = sum(jnp.sum(jnp.square(w)) for w in leaves)
  sum_abs = sum(jnp.sum(jnp.abs(w)) for w in leaves)
  return sum_sq, sum_abs, sum(w.size for w in leaves)


def shape_from_moments(sum_sq, sum_abs, count):
  """(ν̂, β̂): nearest table ρ (ties → smaller ν, clamped to the grid) and β̂ = σ̂·sqrt(Γ(1/ν̂)/Γ(3/ν̂))."""
  rho_hat = count * sum_sq / jnp.square(sum_abs)
  index = jnp.argmin(jnp.abs(rho_hat - jnp.asarray(RHO_TABLE)))
  sigma_hat = jnp.sqrt(sum_sq / count)
  return jnp.asarray(NU_GRID, jnp.float32)[index], sigma_hat * jnp.asarray(SCALE_TABLE)[index]


def estimate_shape(params, pool="all"):
  """(ν̂, β̂) of one array, or pooled over a pytree (μ = 0). Per tensor: `jax.tree.map(estimate_shape, params)`."""
  return shape_from_moments(*moment_sums(params, pool))


def _quantized(w):
  return np.rint(np.asarray(w, np.float32) / np.float32(QUANT_STEP)).astype(np.int64).ravel()


def rate_metrics(params, pool="all"):
  """Host-side rate of the 2^-13-quantised weights k = round(w/Δ) (§7), pooled over the tree: empirical
  entropy and signed order-0 Exp-Golomb length in bits/param, sparsity (k = 0), compression vs fp32/bf16."""
  leaves = [w for w in jax.tree.leaves(params) if in_pool(w, pool)]
  ranges = [(k.min(), k.max()) for k in map(_quantized, leaves)]
  k_min, k_max = int(min(lo for lo, _ in ranges)), int(max(hi for _, hi in ranges))
  counts = np.zeros(k_max - k_min + 1, np.int64)
  for w in leaves:
    counts += np.bincount(_quantized(w) - k_min, minlength=counts.size)
  k = np.arange(k_min, k_max + 1)
  total = counts.sum()
  p = counts[counts > 0] / total
  u = np.where(k > 0, 2 * k - 1, -2 * k)
  golomb_lengths = 2 * (np.frexp(u + 1.0)[1] - 1) + 1
  golomb_bits = float(np.sum(counts * golomb_lengths) / total)
  return {
    "entropy_bits": float(-np.sum(p * np.log2(p))),
    "expgolomb_bits": golomb_bits,
    "sparsity": float(counts[-k_min] / total) if k_min <= 0 <= k_max else 0.0,
    "ratio_fp32": 32.0 / golomb_bits,
    "ratio_bf16": 16.0 / golomb_bits,
  }


def weight_entropy_bits(params, pool="all"):
  """Empirical entropy (bits/param) of the 2^-13-quantised weights, pooled over the tree."""
  return rate_metrics(params, pool)["entropy_bits"]
