"""Config validation that runs before any device work or heavy import: one ConfigError naming the key."""
import math
import re

from tessera.trainer.config_loader import ConfigError

DTYPES = ("float32", "bfloat16")
SCHEDULES = ("cosine", "linear", "constant")
REMAT = ("none", "full", "dots")
ATTENTION = ("xla", "pallas", "cudnn", "auto")
STEM_LOOKUP = ("xla", "pallas", "auto")
STEM_TABLE_INITS = ("xavier_normal", "normal_1")
STEM_FRACTIONS = ("1/3", "1/2", "all")
STEM_UPDATES = ("dense", "sparse_rows")
MESH_AXES = ("data", "fsdp", "tensor")
NUMBER_FORMATS = ("rf8", "e4m3", "e5m2")  # tessera.models.numerics.FORMATS (not imported: no jax here)
FAN_MODES = ("reference", "fan_in")
POOLS = ("all", "matrices")
GROUP_FIELDS = {"pattern": str, "lr_scale": (int, float), "clip": (int, float), "weight_decay": (int, float),
                "frozen": bool}


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
  for key in ("steps", "batch_size", "seq_len", "microbatches"):
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

  o = config.optim
  _one_of(config, "optim.schedule", SCHEDULES)
  _check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
  _check(0 <= o.warmup_steps <= t.steps, "optim.warmup_steps", f"must be in [0, train.steps], got {o.warmup_steps}")
  _check(0 <= o.lr_min_ratio <= 1, "optim.lr_min_ratio", f"must be in [0, 1], got {o.lr_min_ratio}")
  for key in ("b1", "b2"):
    _check(0 <= o[key] < 1, f"optim.{key}", f"must be in [0, 1), got {o[key]}")
  _check(o.eps > 0, "optim.eps", f"must be > 0, got {o.eps}")
  _check(o.clip >= 0, "optim.clip", f"must be >= 0 (0 = no clipping), got {o.clip}")
  _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
  for i, group in enumerate(o.groups):
    _validate_group(i, group)

  m = config.model
  _one_of(config, "model.dtype", DTYPES)
  _one_of(config, "model.param_dtype", DTYPES)
  _one_of(config, "model.remat", REMAT)
  _one_of(config, "model.attention_impl", ATTENTION)
  _check(isinstance(m.vocab_size, int) and m.vocab_size >= 0, "model.vocab_size",
         f"must be >= 0 (0 = the tokenizer's size padded to a multiple of 128), got {m.vocab_size!r}")
  for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
    _check(isinstance(m[key], int) and m[key] >= 1, f"model.{key}", f"must be a positive int, got {m[key]!r}")
  _check(m.n_heads % m.n_kv_heads == 0, "model.n_kv_heads",
         f"model.n_heads={m.n_heads} is not a multiple of n_kv_heads={m.n_kv_heads}")
  _check(m.head_dim > 0 or m.d_model % m.n_heads == 0, "model.d_model",
         f"{m.d_model} is not divisible by model.n_heads={m.n_heads} (or set model.head_dim)")
  tensor = sizes["tensor"]
  if tensor != -1:
    for key in ("n_heads", "n_kv_heads", "vocab_size", "d_ff"):
      _check(m[key] % tensor == 0 or (key == "vocab_size" and m[key] == 0), f"model.{key}", f"{m[key]} is not divisible by mesh.tensor={tensor}")

  _validate_gg(config)

  if m.name == "stem":
    _validate_stem(config)

  c = config.checkpoint
  _check(c.every_steps >= 0, "checkpoint.every_steps", f"must be >= 0 (0 = only at the end), got {c.every_steps}")
  _check(c.every_seconds >= 0, "checkpoint.every_seconds", f"must be >= 0 (0 = off), got {c.every_seconds}")
  _check(c.max_to_keep >= 1, "checkpoint.max_to_keep", f"must be >= 1, got {c.max_to_keep}")
  _check(c.keep_period >= 0, "checkpoint.keep_period", f"must be >= 0 (0 = off), got {c.keep_period}")
  _check(config.eval.every_steps >= 0, "eval.every_steps", f"must be >= 0 (0 = only at the end)")
  _check(config.eval.batches >= 1, "eval.batches", f"must be >= 1, got {config.eval.batches}")
  _check(config.profile.num_steps >= 1, "profile.num_steps", f"must be >= 1, got {config.profile.num_steps}")

  for i, rule in enumerate(config.sharding.rules):
    _check(len(rule) == 2, f"sharding.rules[{i}]", f"must be a (logical, mesh axes) pair, got {rule!r}")
    targets = rule[1] if isinstance(rule[1], (list, tuple)) else [rule[1]]
    for axis in targets:
      _check(axis is None or axis in MESH_AXES, f"sharding.rules[{i}]", f"unknown mesh axis {axis!r}")
  return config


def _validate_stem(config):
  m, s = config.model, config.model.stem
  _one_of(config, "model.stem.table_init", STEM_TABLE_INITS)
  _one_of(config, "model.stem.lookup_impl", STEM_LOOKUP)
  _one_of(config, "optim.stem_update", STEM_UPDATES)
  _check(not m.scan_layers, "model.scan_layers", "the STEM decoder mixes STEM and dense blocks: use False")
  if s.get("offload", False):  # dense Adam would read and write every host row each step: no offload gain
    _check(config.optim.get("stem_update", "dense") == "sparse_rows", "model.stem.offload",
           "needs optim.stem_update=sparse_rows (only the batch's rows leave host memory)")
    _check(config.train.microbatches == 1, "model.stem.offload", "supports train.microbatches=1 only")
    _check(not config.get("regularizer", {}).get("backslash", {}).get("enabled", False), "model.stem.offload",
           "BackSlash (regularizer.backslash.enabled) would rewrite the whole host tables every step")
  layers = s.layers
  if isinstance(layers, str):
    _check(layers in STEM_FRACTIONS, "model.stem.layers",
           f"{layers!r} is not a list or one of {list(STEM_FRACTIONS)}")
  elif layers is not None:
    _check(all(isinstance(i, int) and 0 <= i < m.n_layers for i in layers), "model.stem.layers",
           f"{list(layers)} must be layer indices in [0, model.n_layers={m.n_layers})")


def _validate_group(i, group):
  key = f"optim.groups[{i}]"
  _check(hasattr(group, "keys"), key, f"must be a dict with fields {sorted(GROUP_FIELDS)}")
  unknown = set(group.keys()) - set(GROUP_FIELDS)
  _check(not unknown, key, f"unknown fields {sorted(unknown)}; allowed: {sorted(GROUP_FIELDS)}")
  _check("pattern" in group, key, "needs a 'pattern' (regex matched on parameter paths like 'layers/0/mlp/up')")
  for field, kind in GROUP_FIELDS.items():
    if field in group:
      _check(isinstance(group[field], kind), f"{key}.{field}", f"wrong type {type(group[field]).__name__}")
  try:
    re.compile(group["pattern"])
  except re.error as e:
    _fail(f"{key}.pattern", f"invalid regex: {e}")


def _validate_gg(config):
  """model.gg, model.weight_format / fake_quant and regularizer.backslash (gg_prior.md)."""
  m = config.model
  gg = m.get("gg")
  if gg is not None:
    _check(0 < gg.shape <= 3, "model.gg.shape", f"the GG shape nu must be in (0, 3], got {gg.shape}")
    _check(gg.xi > 0, "model.gg.xi", f"must be > 0 (2 = He), got {gg.xi}")
    _one_of(config, "model.gg.fan_mode", FAN_MODES)
  if "weight_format" in m:
    _one_of(config, "model.weight_format", ("float", *NUMBER_FORMATS))
    _check(m.weight_format == "float", "model.weight_format",
           f"{m.weight_format!r} checkpoints (scripts/quantize) are for eval/sample; train in float "
           "(model.fake_quant for quantization-aware training)")
  if "fake_quant" in m:
    _one_of(config, "model.fake_quant", ("none", *NUMBER_FORMATS))
  b = config.get("regularizer", {}).get("backslash")
  if b is None:
    return
  _check(b.lam >= 0, "regularizer.backslash.lam", f"must be >= 0 (0 = project default), got {b.lam}")
  _check(b.clip > 0, "regularizer.backslash.clip", f"must be > 0 (keeps the step finite at w = 0), got {b.clip}")
  _one_of(config, "regularizer.backslash.pool", POOLS)
  _check(0 <= b.end_fraction <= 1, "regularizer.backslash.end_fraction", f"must be in [0, 1], got {b.end_fraction}")
  if b.enabled:
    _check(m.param_dtype == "float32", "regularizer.backslash.enabled",
           f"BackSlash needs fp32 master weights (model.param_dtype=float32), got {m.param_dtype!r}")
