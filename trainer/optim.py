"""AdamW with warmup + decay, parameter groups matched on paths, each group clipping its own gradient norm.

`optim.groups` entries: {pattern, lr_scale, clip, weight_decay, frozen}; the first whose regex matches a
parameter path ("layers/0/mlp/up/kernel") owns it, the rest fall in the "default" group (optim.clip, weight_decay).
Weight decay applies to matrices only (ndim >= 2): norms and biases are never decayed.
`optim.stem_update="sparse_rows"` swaps the AdamW of the group holding the STEM tables for a lazy, row-wise AdamW
that reads and writes only the rows of the ids in the batch ("dense", the default and the paper's, changes nothing).
"""
import re

import jax
import jax.numpy as jnp
import optax

from tessera.models import stem
from tessera.trainer.config_loader import ConfigError

DEFAULT = "default"
STEM_UPDATES = ("dense", "sparse_rows")
STEM_TABLE = "stem_table"  # the STEM table's parameter name (tessera.models.stem.TABLE_PARAM)


def schedule(o, steps):
  warmup = optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1))
  decay_steps = max(steps - o.warmup_steps, 1)
  if o.schedule == "cosine":
    decay = optax.cosine_decay_schedule(o.lr, decay_steps, alpha=o.lr_min_ratio)
  elif o.schedule == "linear":
    decay = optax.linear_schedule(o.lr, o.lr * o.lr_min_ratio, decay_steps)
  else:
    decay = optax.constant_schedule(o.lr)
  return optax.join_schedules([warmup, decay], [o.warmup_steps])


def path_keys(path):
  """A jax key path as strings: (DictKey('blocks'), SequenceKey(0), ...) -> ('blocks', '0', ...)."""
  return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def is_stem_table(path):
  return path_str(path).endswith(STEM_TABLE)


def path_str(path):
  return "/".join(path_keys(path))


def group_specs(o):
  """name -> dict(lr_scale, clip, weight_decay, frozen); group i is named 'group<i>'."""
  specs = {DEFAULT: dict(lr_scale=1.0, clip=o.clip, weight_decay=o.weight_decay, frozen=False)}
  for i, g in enumerate(o.groups):
    specs[f"group{i}"] = dict(lr_scale=g.get("lr_scale", 1.0), clip=g.get("clip", o.clip),
                              weight_decay=g.get("weight_decay", o.weight_decay), frozen=g.get("frozen", False))
  return specs


def group_labels(o, params):
  """Same-structure tree of group names."""
  patterns = [(f"group{i}", re.compile(g["pattern"])) for i, g in enumerate(o.groups)]

  def label(path, _):
    name = path_str(path)
    return next((g for g, pattern in patterns if pattern.search(name)), DEFAULT)

  return jax.tree_util.tree_map_with_path(label, params)


def build(o, steps, params):
  """The optax transformation for `params` (a pure dict) plus its lr schedule."""
  lr = schedule(o, steps)
  transforms = {}
  for name, g in group_specs(o).items():
    if g["frozen"]:
      transforms[name] = optax.set_to_zero()
      continue
    scale = g["lr_scale"]
    transforms[name] = optax.chain(
        optax.clip_by_global_norm(g["clip"]) if g["clip"] > 0 else optax.identity(),
        optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
        optax.add_decayed_weights(g["weight_decay"], mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
        optax.scale_by_learning_rate(lambda step, s=scale: lr(step) * s),
    )
  labels = group_labels(o, params)
  if o.get("stem_update", "dense") == "sparse_rows":
    for name in _table_groups(params, labels):
      g = group_specs(o)[name]
      transforms[name] = optax.chain(
          optax.clip_by_global_norm(g["clip"]) if g["clip"] > 0 else optax.identity(),
          sparse_row_adamw(o.b1, o.b2, o.eps, g["weight_decay"], lambda step, s=g["lr_scale"]: lr(step) * s))
  return optax.multi_transform(transforms, labels), lr, labels


def _table_groups(params, labels):
  """Groups holding STEM tables; each must hold only tables (its update becomes row-wise)."""
  flat = [(path_str(p), label) for (p, _), label in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                                        jax.tree.leaves(labels))]
  groups = {label for name, label in flat if name.endswith(STEM_TABLE)}
  for name, label in flat:
    if label in groups and not name.endswith(STEM_TABLE):
      raise ConfigError(f"config key 'optim.stem_update': sparse_rows, but group {label!r} holds {name}, "
                        f"not only STEM tables; give the tables their own optim.groups entry (pattern {STEM_TABLE!r})")
  return sorted(groups)


def sparse_row_adamw(b1, b2, eps, weight_decay, lr):
  """Lazy AdamW for [V, F] tables: only rows listed in the extra argument `stem_row_ids` (unique ids, padded with
  V) move; their moments and per-row step counts (bias correction) advance, all other rows stay untouched (no
  decay, no momentum drift). Not the paper's optimizer (stem.md §6): state is as large as dense Adam's, but the
  optimizer reads and writes only U of V rows."""

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


def group_grad_norms(grads, labels, names):
  """{group: global norm of that group's gradients} (fp32)."""
  sq = {n: jnp.zeros((), jnp.float32) for n in names}
  for g, label in zip(jax.tree.leaves(grads), jax.tree.leaves(labels)):
    sq[label] = sq[label] + jnp.sum(jnp.square(g.astype(jnp.float32)))
  return {n: jnp.sqrt(v) for n, v in sq.items()}
