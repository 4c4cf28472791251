"""AdamW with warmup + decay, parameter groups matched on paths, each group clipping its own gradient norm.

`optim.groups` entries: {pattern, lr_scale, clip, weight_decay, frozen}; the first whose regex matches a
parameter path ("layers/0/mlp/up/kernel") owns it, the rest fall in the "default" group (optim.clip, weight_decay).
Weight decay applies to matrices only (ndim >= 2): norms and biases are never decayed.
"""
import re

import jax
import jax.numpy as jnp
import optax

DEFAULT = "default"


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


def path_str(path):
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


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
  return optax.multi_transform(transforms, labels), lr, labels


def group_grad_norms(grads, labels, names):
  """{group: global norm of that group's gradients} (fp32)."""
  sq = {n: jnp.zeros((), jnp.float32) for n in names}
  for g, label in zip(jax.tree.leaves(grads), jax.tree.leaves(labels)):
    sq[label] = sq[label] + jnp.sum(jnp.square(g.astype(jnp.float32)))
  return {n: jnp.sqrt(v) for n, v in sq.items()}
