"""Load `path.py[:arg]` configs and apply `--config.a.b=v` overrides without absl (light imports only)."""
import ast
import importlib.util
import json
import pathlib

import ml_collections


class ConfigError(ValueError):
  """Bad config or input: the CLI prints the one-line message and exits 2 before anything is written."""


def load_module(path):
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"--config: no such config file {str(path)!r}")
  spec = importlib.util.spec_from_file_location(f"tessera_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load(spec):
  """`configs/lm.py:small` -> (locked ConfigDict, module)."""
  path, _, arg = spec.partition(":")
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config: {path} defines no get_config(arg)")
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except ValueError as e:
    raise ConfigError(str(e)) from None
  config.lock()
  return config, module


def parse_value(text):
  """Python literal when it parses (numbers, bools, tuples, lists), else the raw string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _has_key(config, dotted):
  node = config
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def apply_overrides(config, overrides):
  """overrides: {dotted key: value}. Unknown keys and type changes raise ConfigError naming the key."""
  for key, value in overrides.items():
    if not _has_key(config, key):
      raise ConfigError(f"config key {key!r} does not exist")
    old = _get(config, key)
    if isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)):
      value = type(old)(value)
    try:
      config.update_from_flattened_dict({key: value})
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config key {key!r}: cannot set {value!r} ({type(value).__name__}) where "
                        f"{type(old).__name__} is expected: {e}") from None
  return config


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def to_dict(config):
  return json.loads(config.to_json())


def from_json(path):
  """A saved `<workdir>/config.json` back into a locked ConfigDict."""
  config = ml_collections.ConfigDict(json.loads(pathlib.Path(path).read_text()))
  config.lock()
  return config


def flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out
