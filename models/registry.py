"""What a model (and the method around it) registers; the trainer reaches the zoo only through these tables.

A method adds a model file that registers, under its `model.name`:
  register(name)            builder(cfg_model, rngs) -> nnx.Module (the trainer builds it abstractly first)
  accounting(name)          fn(cfg_model, seq_len) -> counts; "train_flops_per_token" drives MFU
  checks(name)              fn(config): raise ValueError("config key 'model.x': ...") for a bad key of its own;
                            runs before anything is written
  sharding_rules(name, r)   extra (logical axis, mesh axes) rules for the axes its params carry; the config's
                            `sharding.rules` take precedence
  step_variant(name)        fn(config) -> a StepVariant or None: only when the train step itself differs
  optimizer_update(name)    a per-group update (`optim.groups[i].update = name`), an OptimizerUpdate
Objectives (tessera.losses.registry) and data pipelines (tessera.data.registry) have their own tables.
"""
import dataclasses
from typing import Any, Callable

MODELS = {}
ACCOUNTING = {}
CHECKS = {}
SHARDING_RULES = {}
STEP_VARIANTS = {}
OPTIMIZER_UPDATES = {}


def _adder(table, name):
  def add(fn):
    table[name] = fn
    return fn
  return add


def register(name):
  """Decorator: registers a builder under `name` (a new method adds a file, never trainer code)."""
  return _adder(MODELS, name)


def get(name):
  if name not in MODELS:
    raise KeyError(f"model.name: unknown model {name!r}; known: {sorted(MODELS)}")
  return MODELS[name]


def accounting(name):
  """Decorator: registers `fn(cfg, seq_len) -> dict` of counts for model `name`; the trainer logs every entry and
  uses "train_flops_per_token" for MFU (models without one fall back to 6 x parameters)."""
  return _adder(ACCOUNTING, name)


def checks(name):
  """Decorator: registers `fn(config)` checking the keys model `name` reads; raises ValueError whose message
  starts with "config key '<key>':" (the CLI prints it as one line and exits 2)."""
  return _adder(CHECKS, name)


def sharding_rules(name, rules):
  """Registers default logical-axis rules for model `name` (e.g. STEM's ("stem_vocab", None))."""
  SHARDING_RULES[name] = tuple(tuple(r) for r in rules)


@dataclasses.dataclass(frozen=True)
class StepVariant:
  """A train step of a method's own (the one documented way to replace the step; STEM's host offload uses it).

  param_shardings(config, shardings) -> shardings: e.g. memory kinds for some params (optimizer leaves that
    mirror a param follow it).
  make(ctx) -> train_step(state, batch) -> (state, metrics): the unjitted body; the trainer jits it with the same
    shardings and donation as the standard step. `ctx` is the trainer's StateFactory: ctx.config, ctx.model(...),
    ctx.tx, ctx.lr_schedule, ctx.group_norms(grads), ctx.objective, ctx.optimizer_args(batch).
  """
  make: Callable[[Any], Callable]
  param_shardings: Callable = lambda config, shardings: shardings


def step_variant(name):
  """Decorator: registers `select(config) -> StepVariant | None` for model `name` (None: the standard step)."""
  return _adder(STEP_VARIANTS, name)


@dataclasses.dataclass(frozen=True)
class OptimizerUpdate:
  """A per-group optimizer update that a method provides.

  make(optim_cfg, group, lr_fn) -> optax.GradientTransformationExtraArgs for one group's params (`group`: the
    group's lr_scale, clip, weight_decay; `lr_fn(step)` its learning rate);
  extra_args(config, batch) -> dict of extra keyword arguments its `update` needs, computed inside the step;
  default(config, paths) -> bool: whether a group without an explicit `update` and holding `paths` uses it (a
    shorthand key such as `optim.stem_update`); may raise ValueError naming the key.
  """
  make: Callable
  extra_args: Callable = lambda config, batch: {}
  default: Callable = lambda config, paths: False


def optimizer_update(name, update):
  OPTIMIZER_UPDATES[name] = update
