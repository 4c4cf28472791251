"""BackSlash as an after-update rule (`regularizer.backslash.*`, keys in configs/gg.py) and the weight statistics.

The rate step (tessera.losses.backslash) moves the fp32 master weights inside the jitted train step while
step < end_fraction x train.steps; its nu-hat, beta-hat, shrink and phase are logged every step. At every eval
(with `regularizer.weight_stats` or BackSlash on) the pooled and per-tensor nu-hat, the rate metrics of gg_prior.md
section 7 (entropy and Exp-Golomb bits/param, sparsity) and per-tensor histograms go to TensorBoard (`weights/...`).
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tessera.losses import backslash
from tessera.losses import registry
from tessera.models import gg_shape
from tessera.models.config_checks import one_of, require

POOLS = ("all", "matrices")


def _path(path):
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def weight_stats(params, pool="all"):
  """Host dict: pooled nu_hat, beta_hat, the rate metrics, and per-tensor nu_hat/<path> of a float params tree."""
  nu, beta = gg_shape.estimate_shape(params, pool)
  stats = {"nu_hat": float(nu), "beta_hat": float(beta), **gg_shape.rate_metrics(params, pool)}
  for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
    stats[f"nu_hat/{_path(path)}"] = float(gg_shape.estimate_shape(w)[0])
  return stats


def check(config):
  b = config.get("regularizer", {}).get("backslash")
  if b is None:
    return
  require(b.lam >= 0, "regularizer.backslash.lam", f"must be >= 0 (0 = project default), got {b.lam}")
  require(b.clip > 0, "regularizer.backslash.clip", f"must be > 0 (keeps the step finite at w = 0), got {b.clip}")
  require(0 <= b.get("nu", 0.0) <= 3, "regularizer.backslash.nu",
          f"must be 0 (estimate nu-hat) or a forced shape in (0, 3], got {b.get('nu')}")
  one_of(config, "regularizer.backslash.pool", POOLS)
  require(0 <= b.end_fraction <= 1, "regularizer.backslash.end_fraction",
          f"must be in [0, 1], got {b.end_fraction}")
  if b.enabled:
    require(config.model.param_dtype == "float32", "regularizer.backslash.enabled",
            f"BackSlash needs fp32 master weights (model.param_dtype=float32), got {config.model.param_dtype!r}")


@registry.rule(check=check)
def make(config):
  settings = config.get("regularizer")
  if settings is None or not (settings.weight_stats or settings.backslash.enabled):
    return None
  b, steps = settings.backslash, config.train.steps

  def after_update(model, step):
    state = nnx.state(model, nnx.Param)
    params = nnx.to_pure_dict(state)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    active = backslash.backslash_active(step, steps, b.end_fraction)
    params, metrics = backslash.backslash_step(params, b.lam or backslash.default_lam(n_params), b.clip, b.pool,
                                               nu=b.get("nu", 0.0) or None, active=active)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return {**{f"backslash/{k}": v for k, v in metrics.items()}, "backslash/active": jnp.asarray(active, jnp.float32)}

  def eval_stats(params_host):
    stats = weight_stats(params_host, b.pool)
    histograms = {_path(p): np.ravel(w) for p, w in jax.tree_util.tree_flatten_with_path(params_host)[0]}
    return stats, histograms

  return registry.Rule(after_update=after_update if b.enabled else None, eval_stats=eval_stats)
