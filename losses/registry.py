"""Objectives by name (config key `loss.name`), plus the rules any objective can pick up from the config.

A builder takes the whole (read-only) config and returns an `Objective` (or a bare loss function). `objective(config)`
adds every registered weight rule the config enables (BackSlash) to the builder's own hooks, so an objective never
needs to know which regularizers exist.
"""
import dataclasses
from typing import Callable, Optional

LOSSES = {}
RULES = []  # (make(config) -> Rule | None, check(config) or None)


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a regularizer or method adds around the loss.

  after_update(model, step) -> metrics: inside the jitted step after the optimizer update; may rewrite params or
    `ModelState` of `model` in place (NNX). `step` is the 0-based update index. Frozen params it changes are ignored.
  eval_stats(params_host) -> (scalars, histograms): at every eval, on host arrays (all params, frozen included).
  """
  after_update: Optional[Callable] = None
  eval_stats: Optional[Callable] = None


@dataclasses.dataclass(frozen=True)
class Objective:
  """loss_fn(model, batch, rng) -> (loss, metrics); `rules` add after-update and eval hooks.

  end_of_run(model, pipeline, workdir) -> dict of summary fields: an evaluation after the last step (e.g. fitting
  probes); runs on every process, its dict lands in summary.json.
  """
  loss_fn: Callable
  rules: tuple = ()
  end_of_run: Optional[Callable] = None

  def after_update(self, model, step):
    metrics = {}
    for rule in self.rules:
      if rule.after_update is not None:
        metrics.update(rule.after_update(model, step))
    return metrics

  @property
  def has_after_update(self):
    return any(rule.after_update is not None for rule in self.rules)

  def eval_stats(self, params_host):
    scalars, histograms = {}, {}
    for rule in self.rules:
      if rule.eval_stats is not None:
        s, h = rule.eval_stats(params_host)
        scalars.update(s)
        histograms.update(h)
    return scalars, histograms


def register(name):
  """Decorator: registers a builder `fn(config) -> Objective | loss_fn` under `name`."""
  def add(builder):
    LOSSES[name] = builder
    return builder
  return add


def rule(check=None):
  """Decorator: registers `make(config) -> Rule | None`, consulted for every objective; `check(config)` raises
  ValueError("config key '...': ...") for bad values of the rule's keys (run even while it is disabled)."""
  def add(make):
    RULES.append((make, check))
    return make
  return add


def get(name):
  if name not in LOSSES:
    raise KeyError(f"loss.name: unknown loss {name!r}; known: {sorted(LOSSES)}")
  return LOSSES[name]


def objective(config):
  """The configured objective with every enabled rule attached."""
  built = get(config.loss.name)(config)
  if not isinstance(built, Objective):
    built = Objective(loss_fn=built)
  extra = tuple(r for r in (make(config) for make, _ in RULES) if r is not None)
  return dataclasses.replace(built, rules=built.rules + extra)


def check(config):
  for _, check_keys in RULES:
    if check_keys is not None:
      check_keys(config)
