"""The trainer's one door to the method registries: plugin imports, the methods' own key checks, the objective.

Every method key is checked by the method itself (tessera.models.registry.checks, tessera.losses.registry.rule);
a ValueError it raises becomes a one-line ConfigError (exit 2) before anything is written.
"""
import importlib
import importlib.util
import pathlib
import sys

from tessera.trainer.config_loader import ConfigError


def import_plugins(config):
  """Imports `config.imports` (module names or .py files) so the methods they hold register themselves."""
  for i, name in enumerate(config.get("imports", [])):
    try:
      if str(name).endswith(".py"):
        path = pathlib.Path(name)
        if not path.is_file():
          raise ConfigError(f"config key 'imports[{i}]': no such file {str(name)!r}")
        module_name = f"tessera_plugin_{path.with_suffix('').name}"
        if module_name not in sys.modules:
          spec = importlib.util.spec_from_file_location(module_name, path)
          module = importlib.util.module_from_spec(spec)
          sys.modules[module_name] = module
          spec.loader.exec_module(module)
      else:
        importlib.import_module(name)
    except ImportError as e:
      raise ConfigError(f"config key 'imports[{i}]': cannot import {name!r}: {e}") from None


def check(config):
  """The model's and every rule's key checks (heavy imports: the zoo)."""
  from tessera import losses  # noqa: F401  (registers objectives and rules)
  from tessera import models  # noqa: F401  (registers the zoo)
  from tessera.losses import registry as loss_registry
  from tessera.models import registry as model_registry
  import_plugins(config)
  if config.model.name not in model_registry.MODELS:
    raise ConfigError(f"config key 'model.name': unknown model {config.model.name!r}; "
                      f"known: {sorted(model_registry.MODELS)}")
  if config.loss.name not in loss_registry.LOSSES:
    raise ConfigError(f"config key 'loss.name': unknown loss {config.loss.name!r}; "
                      f"known: {sorted(loss_registry.LOSSES)}")
  try:
    model_check = model_registry.CHECKS.get(config.model.name)
    if model_check is not None:
      model_check(config)
    loss_registry.check(config)
  except ValueError as e:
    raise ConfigError(str(e).splitlines()[0]) from None


def objective(config):
  from tessera import losses  # noqa: F401
  from tessera.losses import registry as loss_registry
  import_plugins(config)
  try:
    return loss_registry.objective(config)
  except ValueError as e:
    raise ConfigError(str(e).splitlines()[0]) from None
