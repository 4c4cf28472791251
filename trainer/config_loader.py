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
  spec = importlib.util.spec_from_file_location(f"tessera_config_{path.with_suffix('').name}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001  (the user's code: any failure is a bad --config, named in one line)
    raise ConfigError(f"--config: {path} {_failure(e, path)}") from None
  return module


def _failure(e, path):
  """'line N: SyntaxError: ...' for the innermost frame of `path` (where the user's config went wrong)."""
  line = getattr(e, "lineno", None) if isinstance(e, SyntaxError) else None
  tb = e.__traceback__
  while tb is not None:
    if pathlib.Path(tb.tb_frame.f_code.co_filename) == path:
      line = tb.tb_lineno
    tb = tb.tb_next
  message = (e.msg if isinstance(e, SyntaxError) else str(e)).strip().splitlines()
  return (f"line {line}: " if line else "") + f"{type(e).__name__}: {message[0] if message else ''}".rstrip(": ")


def load(spec):
  """`configs/lm.py:small` -> (locked ConfigDict, module)."""
  path, _, arg = spec.partition(":")
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config: {path} defines no get_config(arg)")
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except ValueError as e:
    raise ConfigError(str(e).strip().splitlines()[0]) from None
  except Exception as e:  # noqa: BLE001
    raise ConfigError(f"--config: {path} get_config({arg!r}) failed at {_failure(e, pathlib.Path(path))}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"--config: {path} get_config() returned a {type(config).__name__}, not an "
                      "ml_collections.ConfigDict (start from tessera.configs.defaults.base_config())")
  config.lock()
  return config, module


def parse_value(text):
  """Python literal when it parses (numbers, bools, tuples, lists), else the raw string. `true`/`false` in any case
  are booleans too (what shells, YAML and other trainers' flags use)."""
  if text.strip().lower() in ("true", "false"):
    return text.strip().lower() == "true"
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


def apply_hook(config, module, overrides):
  """A config file's optional `after_overrides(config, overrides)`: run after the command-line overrides, it may
  fill keys from elsewhere (e.g. another run's model shape); its ValueError is a one-line ConfigError."""
  hook = getattr(module, "after_overrides", None)
  if hook is None:
    return config
  try:
    with config.unlocked():
      hook(config, dict(overrides))
  except ValueError as e:
    raise ConfigError(str(e).strip().splitlines()[0]) from None
  return config


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def to_dict(config):
  return json.loads(config.to_json())


SECTIONS = ("train", "optim", "model", "data")  # what every run's config.json has had


def from_json(path):
  """A saved `<workdir>/config.json` back into a locked ConfigDict; unreadable or not a run's config: ConfigError."""
  try:
    value = json.loads(pathlib.Path(path).read_text())
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
  except ValueError as e:
    raise ConfigError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
  missing = [k for k in SECTIONS if not isinstance(value, dict) or not isinstance(value.get(k), dict)]
  if missing:
    raise ConfigError(f"{path}: not a tessera config (no {missing[0]!r} section)")
  config = ml_collections.ConfigDict(value)
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
