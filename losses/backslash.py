"""BackSlash (gg_prior.md §5): a rate step on the weights after every optimizer step, as a pure pytree map.

w ← w − (λν̂/N)·sign(w)·(|w| + c)^(ν̂−1): a gradient step on R(w) = (λ/N)·Σ(|w| + c)^ν̂, the GG negative
log-likelihood with the scale folded into λ and an offset c that keeps the gradient finite at 0 when ν̂ < 1.
ν̂ is re-estimated from the pooled weights each call; the step ignores the learning rate and the optimizer.
"""
import jax
import jax.numpy as jnp

from tessera.models import gg_shape

REFERENCE_LAM = 2e3          # "rdo" of the reference, tuned for GPT-2/BERT-class models
REFERENCE_PARAMS = 1.24e8


def default_lam(n_params):
  """λ = 2e3, or below 1e7 parameters 2e3·N/1.24e8 (the reference's per-weight push λν̂/N)."""
  return REFERENCE_LAM if n_params >= 1e7 else REFERENCE_LAM * n_params / REFERENCE_PARAMS


def backslash_active(step, total_steps, end_fraction=0.75):
  """True while step < end_fraction·total_steps (BackSlash phase, then ordinary fine-tuning)."""
  return step < end_fraction * total_steps


def backslash_step(params, lam, clip=1.0, pool="all", nu=None, active=True):
  """(new params, metrics). Pooled leaves ("all" or "matrices", as §4) move by the rate step; others and, when
  `active` is false, all leaves are returned unchanged. `nu` forces ν̂ (e.g. 1.0: the matched L1 baseline).
  metrics: nu_hat (the ν used), beta_hat, shrink = λν̂/N."""
  sum_sq, sum_abs, count = gg_shape.moment_sums(params, pool)
  nu_hat, beta_hat = gg_shape.shape_from_moments(sum_sq, sum_abs, count)
  nu_hat = nu_hat if nu is None else jnp.float32(nu)
  shrink = lam * nu_hat / count

  def step(w):
    if not gg_shape.in_pool(w, pool):
      return w
    w32 = jnp.asarray(w, jnp.float32)
    moved = w32 - shrink * jnp.sign(w32) * jnp.power(jnp.abs(w32) + clip, nu_hat - 1)
    return jnp.where(active, moved, w32).astype(w.dtype)

  return jax.tree.map(step, params), {"nu_hat": nu_hat, "beta_hat": beta_hat, "shrink": shrink}
