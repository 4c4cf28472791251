"""Validation of the spine's keys, before any device work or heavy import: one ConfigError naming the key.

Model, objective and rule keys are checked by their methods (tessera.trainer.zoo.check); this file names none.
"""
import importlib.util
import math
import re

from tessera.trainer.config_loader import ConfigError

SCHEDULES = ("cosine", "linear", "constant")
MESH_AXES = ("data", "fsdp", "tensor")
GROUP_FIELDS = {"pattern": str, "lr_scale": (int, float), "clip": (int, float), "weight_decay": (int, float),
                "frozen": bool, "update": str}


def _fail(key, message):
  raise ConfigError(f"config key {key!r}: {message}")


def _check(condition, key, message):
  if not condition:
    _fail(key, message)


def _one_of(config, key, choices):
  value = _lookup(config, key)
  _check(value in choices, key, f"{value!r} is not one of {list(choices)}")


def _lookup(config, key):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def mesh_shape(config, device_count=None):
  """Mesh axis sizes; a -1 axis takes the devices left (needs device_count, else stays -1)."""
  sizes = {a: config.mesh[a] for a in MESH_AXES}
  if device_count is not None and -1 in sizes.values():
    known = math.prod(s for s in sizes.values() if s != -1)
    if device_count % known:
      _fail("mesh", f"{device_count} devices cannot be split into a mesh with fixed axes {sizes}")
    sizes = {a: (device_count // known if s == -1 else s) for a, s in sizes.items()}
  if device_count is not None:
    _check(math.prod(sizes.values()) == device_count, "mesh",
           f"mesh {sizes} needs {math.prod(sizes.values())} devices but {device_count} are present")
  return sizes


def validate(config, device_count=None):
  """Raises ConfigError for the first problem found. With device_count, also checks mesh arithmetic."""
  t = config.train
  for key in ("steps", "batch_size", "seq_len", "microbatches", "log_every_steps"):
    _check(isinstance(t[key], int) and t[key] >= 1, f"train.{key}", f"must be a positive int, got {t[key]!r}")
  _check(t.batch_size % t.microbatches == 0, "train.batch_size",
         f"{t.batch_size} is not divisible by train.microbatches={t.microbatches}")

  for axis in MESH_AXES:
    size = config.mesh[axis]
    _check(isinstance(size, int) and (size >= 1 or size == -1), f"mesh.{axis}", f"must be >= 1 or -1, got {size!r}")
  _check(sum(config.mesh[a] == -1 for a in MESH_AXES) <= 1, "mesh", "at most one axis may be -1")
  sizes = mesh_shape(config, device_count)
  batch_shards = math.prod(s for a, s in sizes.items() if a in ("data", "fsdp") and s != -1)
  _check(t.batch_size % batch_shards == 0, "train.batch_size",
         f"{t.batch_size} is not divisible by the batch-sharding axes data*fsdp={batch_shards}")
  _check((t.batch_size // t.microbatches) % batch_shards == 0, "train.microbatches",
         f"microbatch size {t.batch_size // t.microbatches} is not divisible by data*fsdp={batch_shards}")

  budget = t.get("memory_budget_gb", 0.0)
  _check(isinstance(budget, (int, float)) and 0 <= budget < math.inf, "train.memory_budget_gb",
         f"must be a finite number of GB >= 0 (0 = the device's memory), got {budget}")

  o = config.optim
  _one_of(config, "optim.schedule", SCHEDULES)
  _check(isinstance(o.lr, (int, float)) and 0 < o.lr < math.inf, "optim.lr", f"must be finite and > 0, got {o.lr}")
  _check(0 <= o.warmup_steps <= t.steps, "optim.warmup_steps", f"must be in [0, train.steps], got {o.warmup_steps}")
  _check(0 <= o.lr_min_ratio <= 1, "optim.lr_min_ratio", f"must be in [0, 1], got {o.lr_min_ratio}")
  for key in ("b1", "b2"):
    _check(0 <= o[key] < 1, f"optim.{key}", f"must be in [0, 1), got {o[key]}")
  _check(o.eps > 0, "optim.eps", f"must be > 0, got {o.eps}")
  _check(o.clip >= 0, "optim.clip", f"must be >= 0 (0 = no clipping), got {o.clip}")
  _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
  for i, group in enumerate(o.groups):
    _validate_group(i, group)

  _regex(config.train.trainable, "train.trainable")
  _check(isinstance(config.init.workdir, str), "init.workdir", "must be a run directory (a string)")
  for i, rule in enumerate(config.init.map):
    source, sep, _ = str(rule).partition("=")
    _check(sep and source, f"init.map[{i}]", f"expected 'source_regex=target', got {rule!r}")
    _regex(source, f"init.map[{i}]")

  c = config.checkpoint
  _check(c.every_steps >= 0, "checkpoint.every_steps", f"must be >= 0 (0 = only at the end), got {c.every_steps}")
  _check(c.every_seconds >= 0, "checkpoint.every_seconds", f"must be >= 0 (0 = off), got {c.every_seconds}")
  _check(c.max_to_keep >= 1, "checkpoint.max_to_keep", f"must be >= 1, got {c.max_to_keep}")
  _check(c.keep_period >= 0, "checkpoint.keep_period", f"must be >= 0 (0 = off), got {c.keep_period}")
  _check(config.eval.every_steps >= 0, "eval.every_steps", f"must be >= 0 (0 = only at the end)")
  _check(config.eval.batches >= 1, "eval.batches", f"must be >= 1, got {config.eval.batches}")
  for key, meaning in (("workers", "0 = read in this process"), ("prefetch", "0 = no prefetch")):
    value = config.data.get(key, 0)
    _check(isinstance(value, int) and value >= 0, f"data.{key}", f"must be an int >= 0 ({meaning}), got {value!r}")
  _check(config.profile.num_steps >= 1, "profile.num_steps", f"must be >= 1, got {config.profile.num_steps}")
  if config.get("metrics") is not None and config.metrics.get("wandb"):
    _check(importlib.util.find_spec("wandb") is not None, "metrics.wandb",
           "True needs the wandb package (pip install wandb); WANDB_MODE=offline logs without an account")

  for i, rule in enumerate(config.sharding.rules):
    _check(len(rule) == 2, f"sharding.rules[{i}]", f"must be a (logical, mesh axes) pair, got {rule!r}")
    targets = rule[1] if isinstance(rule[1], (list, tuple)) else [rule[1]]
    for axis in targets:
      _check(axis is None or axis in MESH_AXES, f"sharding.rules[{i}]", f"unknown mesh axis {axis!r}")
  return config


def _validate_group(i, group):
  key = f"optim.groups[{i}]"
  _check(hasattr(group, "keys"), key, f"must be a dict with fields {sorted(GROUP_FIELDS)}")
  unknown = set(group.keys()) - set(GROUP_FIELDS)
  _check(not unknown, key, f"unknown fields {sorted(unknown)}; allowed: {sorted(GROUP_FIELDS)}")
  _check("pattern" in group, key, "needs a 'pattern' (regex matched on parameter paths like 'layers/0/mlp/up')")
  for field, kind in GROUP_FIELDS.items():
    if field in group:
      _check(isinstance(group[field], kind), f"{key}.{field}", f"wrong type {type(group[field]).__name__}")
  _regex(group["pattern"], f"{key}.pattern")


def _regex(pattern, key):
  try:
    re.compile(pattern)
  except (re.error, TypeError) as e:
    _fail(key, f"invalid regex: {e}")
