"""ZeTT's two-stage learning rate (zett.md §6) as a method-provided optimizer update, "zett_two_stage".

Stage 1 (the identity stage): linear 0 -> `identity_lr` over `identity_steps`; stage 2: linear 0 -> `optim.lr` over
`warmup` more steps, then cosine to `optim.lr_min_ratio` x `optim.lr` at train.steps. tessera's own schedule is one
warmup + decay, so the method brings its update (AdamW as the trainer's: clip, Adam, decay on matrices only, the
schedule) through `models.registry.optimizer_update`; `optim.zett.two_stage=True` makes it the default for a zett
run's parameters. The trainer's logged `lr` is its own schedule; the objective logs `zett_lr`, the one applied.
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax

from tessera.models import registry

NAME = "zett_two_stage"


def add_keys(c, identity_lr=3e-4, warmup_fraction=0.05):
  """optim.zett: two_stage, identity_lr, identity_steps and total steps (references: they follow train.steps)."""
  c.optim.zett = ml_collections.ConfigDict(dict(two_stage=True, identity_lr=identity_lr))
  c.optim.zett.identity_steps = c.data.zett.get_ref("identity_steps")
  c.optim.zett.total_steps = c.train.get_ref("steps")
  c.optim.zett.warmup = (c.train.get_ref("steps") * warmup_fraction).to_int()
  return c


def schedule(o):
  z = o.zett
  identity, warmup = max(int(z.identity_steps), 0), max(int(z.warmup), 1)
  decay = max(int(z.total_steps) - identity - warmup, 1)
  parts = [optax.linear_schedule(0.0, z.identity_lr, max(identity, 1)), optax.linear_schedule(0.0, o.lr, warmup),
           optax.cosine_decay_schedule(o.lr, decay, alpha=o.lr_min_ratio)]
  if identity == 0:
    return optax.join_schedules(parts[1:], [warmup])
  return optax.join_schedules(parts, [identity, identity + warmup])


def make(o, group, lr_fn):
  del lr_fn  # the trainer's one-stage schedule
  return optax.chain(
      optax.clip_by_global_norm(group["clip"]) if group["clip"] > 0 else optax.identity(),
      optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
      optax.add_decayed_weights(group["weight_decay"], mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
      optax.scale_by_learning_rate(schedule(o)),
  )


def _default(config, paths):
  z = config.optim.get("zett")
  return config.model.name == "zett" and z is not None and bool(z.two_stage)


registry.optimizer_update(NAME, registry.OptimizerUpdate(make=make, default=_default))


def lr_at(o, step):
  """The applied learning rate at a (traced) step, for logging."""
  return schedule(o)(jnp.asarray(step))
