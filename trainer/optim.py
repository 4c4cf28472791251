"""AdamW with warmup + decay, parameter groups matched on paths, each group clipping its own gradient norm.

`optim.groups` entries: {pattern, lr_scale, clip, weight_decay, frozen, update}; the first whose regex matches a
parameter path ("blocks/0/mlp/up") owns it, the rest fall in the "default" group (optim.clip, weight_decay).
A frozen group's params are not trained at all (they live in state["frozen"], see trainer.state). `update` names
the group's transformation: "adamw" (default) or one a method registers (tessera.models.registry.optimizer_update).
Weight decay applies to matrices only (ndim >= 2): norms and biases are never decayed.
"""
import re

import jax
import jax.numpy as jnp
import optax

from tessera.models import registry as model_registry

DEFAULT = "default"
ADAMW = "adamw"


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


def path_str(path):
  return "/".join(path_keys(path))


def group_specs(o):
  """name -> dict(lr_scale, clip, weight_decay, frozen, update); group i is named 'group<i>'."""
  specs = {DEFAULT: dict(lr_scale=1.0, clip=o.clip, weight_decay=o.weight_decay, frozen=False, update=None)}
  for i, g in enumerate(o.groups):
    specs[f"group{i}"] = dict(lr_scale=g.get("lr_scale", 1.0), clip=g.get("clip", o.clip),
                              weight_decay=g.get("weight_decay", o.weight_decay), frozen=g.get("frozen", False),
                              update=g.get("update"))
  return specs


def group_of(o, name):
  """The group owning parameter path `name`."""
  for i, g in enumerate(o.groups):
    if re.search(g["pattern"], name):
      return f"group{i}"
  return DEFAULT


def group_labels(o, params):
  """Same-structure tree of group names."""
  return jax.tree_util.tree_map_with_path(lambda path, _: group_of(o, path_str(path)), params)


def _adamw(o, g, lr_fn):
  return optax.chain(
      optax.clip_by_global_norm(g["clip"]) if g["clip"] > 0 else optax.identity(),
      optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
      optax.add_decayed_weights(g["weight_decay"], mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
      optax.scale_by_learning_rate(lr_fn),
  )


def group_updates(config, labels, params):
  """{group: update name} for the groups holding params: the group's `update`, else the first registered update
  whose `default` claims the group's paths (a method's shorthand key), else AdamW."""
  paths = {}
  for (path, _), label in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(labels)):
    paths.setdefault(label, []).append(path_str(path))
  specs = group_specs(config.optim)
  chosen = {}
  for name, group_paths in paths.items():
    update = specs[name]["update"]
    if update is not None and update != ADAMW and update not in model_registry.OPTIMIZER_UPDATES:
      raise ValueError(f"config key 'optim.groups[{name.removeprefix('group')}].update': unknown update "
                       f"{update!r}; known: {sorted([ADAMW, *model_registry.OPTIMIZER_UPDATES])}")
    if update is None:
      update = next((u for u, spec in sorted(model_registry.OPTIMIZER_UPDATES.items())
                     if spec.default(config, group_paths)), ADAMW)
    chosen[name] = update
  return chosen


def build(config, params):
  """(optax transformation for the trainable `params` (a pure dict), lr schedule, group labels, {group: update})."""
  o = config.optim
  lr = schedule(o, config.train.steps)
  labels = group_labels(o, params)
  updates = group_updates(config, labels, params)
  transforms = {}
  for name, update in updates.items():
    g = group_specs(o)[name]
    lr_fn = lambda step, s=g["lr_scale"]: lr(step) * s
    transforms[name] = _adamw(o, g, lr_fn) if update == ADAMW else model_registry.OPTIMIZER_UPDATES[update].make(
        o, g, lr_fn)
  return optax.multi_transform(transforms, labels), lr, labels, updates


def extra_args(config, updates, batch):
  """Extra keyword arguments of the method updates in use (e.g. the batch's unique ids for sparse rows)."""
  args = {}
  for update in sorted(set(updates.values()) - {ADAMW}):
    args.update(model_registry.OPTIMIZER_UPDATES[update].extra_args(config, batch))
  return args


def group_grad_norms(grads, labels, names):
  """{group: global norm of that group's gradients} (fp32)."""
  sq = {n: jnp.zeros((), jnp.float32) for n in names}
  for g, label in zip(jax.tree.leaves(grads), jax.tree.leaves(labels)):
    sq[label] = sq[label] + jnp.sum(jnp.square(g.astype(jnp.float32)))
  return {n: jnp.sqrt(v) for n, v in sq.items()}
