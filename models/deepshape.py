"""DeepShape histogram specification (gg_prior.md §6): a rank-preserving remap of the weights onto a sharper GG.

Host-side NumPy, one-off. On the 2^-13 grid: cut the tails where a cell right of the centre holds ≤ adj_minnum
weights, fit (μ, ν, β) to the in-range weights, and hand out the target counts floor(N_in·p(x)) of
GG(μ, β·std_scale, ν·shape_scale) to the sorted weights, lowest cells first. Weights left over after the flooring
(the top of the order) and tail weights keep their quantised value.
"""
import jax
import numpy as np

from tessera.models import gg_shape


def default_adj_minnum(n_params):
  """1000 (reference, millions of parameters); below 1e7 parameters max(10, round(1000·N/1e7))."""
  return 1000 if n_params >= 1e7 else max(10, round(1000 * n_params / 1e7))


def fit_gg(values):
  """(μ, ν̂, β̂) with μ = mean and ν̂, β̂ from the centred moments (§4)."""
  mu = float(np.mean(values, dtype=np.float64))
  centred = np.asarray(values, np.float64) - mu
  nu, beta = gg_shape.shape_from_moments(np.sum(centred ** 2), np.sum(np.abs(centred)), centred.size)
  return mu, float(nu), float(beta)


def deepshape(w, shape_scale=0.8, std_scale=0.6, adj_minnum=1000, step=gg_shape.QUANT_STEP):
  """(remapped float32 copy of w, info). w is any array; the remap runs on its flattened values."""
  k = np.rint(np.asarray(w, np.float32).ravel() / np.float32(step)).astype(np.int64)
  k_centre = int(np.rint(k.mean()))
  k_low = k.min()
  counts = np.bincount(k - k_low)
  offsets = np.arange(1, counts.size - (k_centre - k_low))
  sparse = counts[k_centre - k_low + offsets] <= adj_minnum
  half_width = int(offsets[np.argmax(sparse)]) if sparse.any() else int(k.max() - k_centre + 1)
  in_range = np.abs(k - k_centre) <= half_width
  mu, nu, beta = fit_gg(k[in_range] * step)
  nu_target, beta_target = shape_scale * nu, std_scale * beta

  cells = np.arange(k_centre - half_width, k_centre + half_width + 1)
  log_p = -np.power(np.abs(cells * step - mu) / beta_target, nu_target)
  p = np.exp(log_p - log_p.max())
  n_in = int(in_range.sum())
  target_counts = np.floor(n_in * p / p.sum()).astype(np.int64)

  flat_w = np.asarray(w, np.float32).ravel()
  k_new = k.copy()
  order = np.flatnonzero(in_range)[np.argsort(flat_w[in_range], kind="stable")]
  assigned = target_counts.sum()
  k_new[order[:assigned]] = np.repeat(cells, target_counts)
  info = {"centre": k_centre * step, "half_width": half_width * step, "n_in": n_in, "mu": mu, "nu": nu,
          "beta": beta, "nu_target": nu_target, "beta_target": beta_target, "leftover": n_in - int(assigned),
          "adj_minnum": adj_minnum}
  return (k_new * step).astype(np.float32).reshape(np.shape(w)), info


def deepshape_tree(params, shape_scale=0.8, std_scale=0.6, adj_minnum=None):
  """DeepShape over all leaves of a pytree flattened into one vector (reference); returns (params, info) with
  each leaf's shape and dtype kept (NumPy leaves: re-shard on load). adj_minnum=None: `default_adj_minnum`."""
  leaves, treedef = jax.tree.flatten(params)
  flat = np.concatenate([np.asarray(w, np.float32).ravel() for w in leaves])
  if adj_minnum is None:
    adj_minnum = default_adj_minnum(flat.size)
  remapped, info = deepshape(flat, shape_scale, std_scale, adj_minnum)
  splits = np.cumsum([np.size(w) for w in leaves])[:-1]
  new_leaves = [part.reshape(np.shape(w)).astype(np.asarray(w).dtype)
                for part, w in zip(np.split(remapped, splits), leaves)]
  return jax.tree.unflatten(treedef, new_leaves), info
