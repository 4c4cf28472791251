"""STEM's lazy row-wise AdamW (`optim.groups[i].update = "sparse_rows"`, shorthand `optim.stem_update`).

Only the rows of the ids in the batch move: their moments and per-row step counts (bias correction) advance, all
other rows stay untouched (no decay, no momentum drift). Not the paper's optimizer (stem.md section 6): the state
is as large as dense Adam's, but the update reads and writes only U of V rows.
"""
import jax
import jax.numpy as jnp
import optax

from tessera.models import registry
from tessera.models import stem

UPDATES = ("dense", "sparse_rows")


def sparse_row_adamw(b1, b2, eps, weight_decay, lr):
  """Lazy AdamW for [V, F] tables; `update` takes the extra argument `stem_row_ids` (unique ids, padded with V)."""

  def init(params):
    return {"count": jnp.zeros((), jnp.int32),
            "mu": jax.tree.map(jnp.zeros_like, params), "nu": jax.tree.map(jnp.zeros_like, params),
            "row_count": jax.tree.map(lambda p: jnp.zeros(p.shape[:1], jnp.int32), params)}

  def update(grads, state, params, *, stem_row_ids, stem_grads_are_rows=False, **_):
    """`stem_grads_are_rows` (host offload): grads are the [U, F] gradients of the rows `stem_row_ids`, and the
    returned updates are [U, F] too (add them at those rows); tables and moments are read and written in place,
    host memory included, without a dense [V, F] temporary."""
    step_lr = lr(state["count"])

    def one(g, p, mu, nu, row_count):
      ids_U = stem_row_ids
      take = (lambda a: stem.gather_rows(a, ids_U)) if stem_grads_are_rows else (
          lambda a: a.at[ids_U].get(mode="fill", fill_value=0))
      g_UxF = g if stem_grads_are_rows else take(g)
      mu_UxF = b1 * take(mu) + (1 - b1) * g_UxF
      nu_UxF = b2 * take(nu) + (1 - b2) * jnp.square(g_UxF)
      count_U = row_count.at[ids_U].get(mode="fill", fill_value=0) + 1
      mu_hat = mu_UxF / (1 - b1 ** count_U.astype(jnp.float32))[:, None]
      nu_hat = nu_UxF / (1 - b2 ** count_U.astype(jnp.float32))[:, None]
      p_UxF = take(p)
      step_UxF = -step_lr * (mu_hat / (jnp.sqrt(nu_hat) + eps) + weight_decay * p_UxF)
      counts = row_count.at[ids_U].set(count_U, mode="drop")
      if stem_grads_are_rows:
        return (step_UxF.astype(p.dtype), stem.scatter_rows(mu, ids_U, mu_UxF), stem.scatter_rows(nu, ids_U, nu_UxF),
                counts)
      return (jnp.zeros_like(p).at[ids_U].set(step_UxF.astype(p.dtype), mode="drop"),
              mu.at[ids_U].set(mu_UxF, mode="drop"), nu.at[ids_U].set(nu_UxF, mode="drop"), counts)

    out = jax.tree.map(one, grads, params, state["mu"], state["nu"], state["row_count"])
    pick = lambda i: jax.tree.map(lambda _, o: o[i], grads, out)
    return pick(0), {"count": state["count"] + 1, "mu": pick(1), "nu": pick(2), "row_count": pick(3)}

  return optax.GradientTransformationExtraArgs(init, update)


def _make(o, group, lr_fn):
  clip = optax.clip_by_global_norm(group["clip"]) if group["clip"] > 0 else optax.identity()
  return optax.chain(clip, sparse_row_adamw(o.b1, o.b2, o.eps, group["weight_decay"], lr_fn))


def _row_ids(config, batch):
  V = config.model.vocab_size
  ids = batch["inputs"]
  return {"stem_row_ids": jnp.unique(ids, size=min(V, ids.size), fill_value=V)}


def _is_default(config, paths):
  """`optim.stem_update=sparse_rows` selects this update for the group holding the tables (tables only)."""
  if config.optim.get("stem_update", "dense") != "sparse_rows":
    return False
  tables = [p for p in paths if p.endswith(stem.TABLE_PARAM)]
  if tables and len(tables) != len(paths):
    other = next(p for p in paths if not p.endswith(stem.TABLE_PARAM))
    raise ValueError(f"config key 'optim.stem_update': sparse_rows, but the group holding the STEM tables also "
                     f"holds {other}; give the tables their own optim.groups entry (pattern {stem.TABLE_PARAM!r})")
  return bool(tables)


registry.optimizer_update("sparse_rows", registry.OptimizerUpdate(make=_make, extra_args=_row_ids,
                                                                   default=_is_default))
