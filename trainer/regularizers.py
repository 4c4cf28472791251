"""Weight-space regularizers that run after the optimizer update (`regularizer.*`) and the weight statistics.

BackSlash (gg_prior.md §5, tessera.losses.backslash) moves the fp32 master weights by a rate step inside the
jitted train step while step < end_fraction · train.steps; its ν̂, β̂, shrink λν̂/N and phase are logged every
step. At every eval, `log_weight_stats` writes pooled and per-tensor ν̂, the rate metrics of §7 (entropy and
Exp-Golomb bits/param, sparsity) and per-tensor weight histograms to TensorBoard (`weights/...`).
"""
import jax
import jax.numpy as jnp
import numpy as np

from tessera.losses import backslash
from tessera.models import gg_shape
from tessera.trainer import optim


def _settings(config):
  return config.get("regularizer", None)


def backslash_lam(config, n_params):
  """λ of the run: `regularizer.backslash.lam`, or the project default for N parameters when it is 0."""
  return _settings(config).backslash.lam or backslash.default_lam(n_params)


def after_update(factory, params, step):
  """(params, metrics) after the optimizer update of update index `step` (0-based); identity when disabled."""
  settings = _settings(factory.config)
  if settings is None or not settings.backslash.enabled:
    return params, {}
  b = settings.backslash
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(factory.abstract_params))
  active = backslash.backslash_active(step, factory.config.train.steps, b.end_fraction)
  params, metrics = backslash.backslash_step(params, backslash_lam(factory.config, n_params), b.clip, b.pool,
                                             active=active)
  return params, {**{f"backslash/{k}": v for k, v in metrics.items()},
                  "backslash/active": jnp.asarray(active, jnp.float32)}


def weight_stats_enabled(config):
  settings = _settings(config)
  return settings is not None and (settings.weight_stats or settings.backslash.enabled)


def weight_stats(params, pool="all"):
  """Host dict: pooled nu_hat, beta_hat, the rate metrics, and per-tensor nu_hat/<path> of a float params tree."""
  nu, beta = gg_shape.estimate_shape(params, pool)
  stats = {"nu_hat": float(nu), "beta_hat": float(beta), **gg_shape.rate_metrics(params, pool)}
  for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
    stats[f"nu_hat/{optim.path_str(path)}"] = float(gg_shape.estimate_shape(w)[0])
  return stats


def log_weight_stats(writer, step, params, config):
  """Writes `weights/*` scalars and histograms at an eval; returns the pooled values for summary.json ({} when
  disabled). Params are gathered to the host (every process takes part; process 0 writes)."""
  if not weight_stats_enabled(config):
    return {}
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    host = multihost_utils.process_allgather(params, tiled=True)
  else:
    host = jax.device_get(params)
  stats = weight_stats(host, _settings(config).backslash.pool)
  writer.scalars(step, stats, "weights")
  if writer.tb:
    for path, w in jax.tree_util.tree_flatten_with_path(host)[0]:
      writer.tb.add_histogram(f"weights/{optim.path_str(path)}", np.ravel(w), step)
  return {k: v for k, v in stats.items() if "/" not in k}
