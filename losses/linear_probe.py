"""Linear probes and their metrics (jepa_ehr.md §7): L2 logistic regression in JAX (full-batch L-BFGS via
`optax.lbfgs`, up to 500 iterations with a gradient-norm stop, one fit per C vmapped), AUROC / AUPRC with sample
weights, subject-level bootstrap CIs (single-class resamples redrawn), and stratified subject-grouped folds.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # spec §7


def _bucket(n, least):
  """Padded size: a power of two >= `least`. Rows pad with weight 0, features with zero columns (their weights
  stay 0 under L2), so one compile serves every task, node and feature set of a run."""
  return max(least, 1 << (int(n) - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("iterations",))
def _fit(x_NxD, y_N, w_N, cs_C, iterations, tol=1e-5):
  """L-BFGS per C, at most `iterations` steps, stopping once the gradient norm is below `tol` (the objective is a
  mean: O(1)); under vmap every C runs until the slowest has stopped."""
  n_eff = jnp.maximum(jnp.sum(w_N), 1.0)

  def fit_one(c):
    def objective(theta_D1):
      z_N = x_NxD @ theta_D1[:-1] + theta_D1[-1]
      nll = jnp.sum(w_N * (jax.nn.softplus(z_N) - y_N * z_N)) / n_eff
      return nll + 0.5 * jnp.sum(jnp.square(theta_D1[:-1])) / (c * n_eff)  # sklearn's C convention

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def cond(carry):
      _, _, i, grad_norm = carry
      return (i < iterations) & (grad_norm > tol)

    def step(carry):
      theta, state, i, _ = carry
      value, grad = value_and_grad(theta, state=state)
      updates, state = opt.update(grad, state, theta, value=value, grad=grad, value_fn=objective)
      return optax.apply_updates(theta, updates), state, i + 1, jnp.linalg.norm(grad)

    theta0 = jnp.zeros(x_NxD.shape[1] + 1, jnp.float32)
    theta, _, _, _ = jax.lax.while_loop(cond, step, (theta0, opt.init(theta0), 0, jnp.float32(jnp.inf)))
    return theta

  return jax.vmap(fit_one)(cs_C)


def fit_logistic(x_NxD, y_N, cs=CS, iterations=500):
  """[C, D + 1] weights (last = bias), one L2 logistic regression per C, fp32."""
  n, d = x_NxD.shape
  size, width = _bucket(n, 1024), _bucket(d, 64)
  x = np.zeros((size, width), np.float32)
  x[:n, :d] = x_NxD
  y, w = np.zeros(size, np.float32), np.zeros(size, np.float32)
  y[:n], w[:n] = y_N, 1.0
  theta_CxW1 = np.asarray(_fit(x, y, w, jnp.asarray(cs, jnp.float32), iterations))
  return np.concatenate([theta_CxW1[:, :d], theta_CxW1[:, -1:]], axis=1)


def scores(theta_CxD1, x_NxD):
  return np.asarray(x_NxD, np.float64) @ theta_CxD1[..., :-1].T + theta_CxD1[..., -1]


def auroc(y_N, s_N, w_N=None):
  """Weighted Mann-Whitney AUROC (ties count 1/2); NaN when a class is missing."""
  w_N = np.ones(len(y_N)) if w_N is None else np.asarray(w_N, np.float64)
  y_N = np.asarray(y_N, bool)
  values, inverse = np.unique(np.asarray(s_N), return_inverse=True)
  pos_U = np.bincount(inverse, w_N * y_N, len(values))
  neg_U = np.bincount(inverse, w_N * ~y_N, len(values))
  total_pos, total_neg = pos_U.sum(), neg_U.sum()
  if total_pos == 0 or total_neg == 0:
    return float("nan")
  below_U = np.cumsum(neg_U) - neg_U
  return float(np.sum(pos_U * (below_U + 0.5 * neg_U)) / (total_pos * total_neg))


def auprc(y_N, s_N, w_N=None):
  """Weighted average precision (step-wise, one threshold per distinct score, as scikit-learn)."""
  w_N = np.ones(len(y_N)) if w_N is None else np.asarray(w_N, np.float64)
  y_N = np.asarray(y_N, bool)
  values, inverse = np.unique(-np.asarray(s_N), return_inverse=True)  # descending scores
  tp = np.cumsum(np.bincount(inverse, w_N * y_N, len(values)))
  fp = np.cumsum(np.bincount(inverse, w_N * ~y_N, len(values)))
  if tp[-1] == 0:
    return float("nan")
  recall, precision = tp / tp[-1], tp / np.maximum(tp + fp, 1e-12)
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def bootstrap_ci(y_N, s_N, groups_N, resamples=1000, seed=0, level=0.95):
  """(lo, hi) of AUROC over subject-level bootstrap resamples; a single-class resample is redrawn."""
  subjects, group_of = np.unique(groups_N, return_inverse=True)
  rng = np.random.default_rng(seed)
  values, attempts = [], 0
  while len(values) < resamples and attempts < 20 * resamples:
    attempts += 1
    counts = np.bincount(rng.integers(0, len(subjects), len(subjects)), minlength=len(subjects))
    value = auroc(y_N, s_N, counts[group_of])
    if not np.isnan(value):
      values.append(value)
  if not values:
    return float("nan"), float("nan")
  tail = (1 - level) / 2
  return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def grouped_folds(y_N, groups_N, k=5, seed=0):
  """Fold id per row: subjects (all their rows together) dealt round-robin after a seeded shuffle, subjects with a
  positive first, so each fold gets a share of the positives (stratified, subject-grouped)."""
  subjects = np.unique(groups_N)
  positive = {g for g in np.unique(groups_N[np.asarray(y_N, bool)])}
  order = np.random.default_rng(seed).permutation(len(subjects))
  ranked = sorted(subjects[order].tolist(), key=lambda g: g not in positive)
  fold_of = {g: i % k for i, g in enumerate(ranked)}
  return np.asarray([fold_of[g] for g in groups_N.tolist()])


def zscore(train_NxD, *others):
  """Standardise with the training rows' statistics (§7)."""
  mean_D, std_D = train_NxD.mean(0), train_NxD.std(0) + 1e-6
  return [(x - mean_D) / std_D for x in (train_NxD, *others)]


def select_and_fit(x_tr, y_tr, x_val, y_val, cs=CS, iterations=500):
  """Fit every C on (x_tr, y_tr); pick the C with the best validation AUROC (the middle C when the validation set
  is single-class). Returns (theta [D + 1], C)."""
  theta_CxD1 = fit_logistic(x_tr, y_tr, cs, iterations)
  aucs = [auroc(y_val, s) for s in scores(theta_CxD1, x_val).T]
  best = len(cs) // 2 if all(np.isnan(a) for a in aucs) else int(np.nanargmax(aucs))
  return theta_CxD1[best], cs[best]
