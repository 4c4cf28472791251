"""The STEM method's registrations: its key checks, its sharding rule, its optimizer update and its step variant.

Keys (configs/stem.py `add_keys`): model.stem.{layers, table_init, lookup_impl, offload}, optim.stem_update.
"""
from tessera.models import config_checks
from tessera.models import registry
from tessera.models import stem
from tessera.models import stem_optim  # noqa: F401  (registers the "sparse_rows" optimizer update)
from tessera.models import stem_rows_step
from tessera.models.config_checks import one_of, require

LOOKUPS = ("xla", "pallas", "auto")

# STEM tables: replicated along V (sharding V over the batch axes would all-gather every step).
registry.sharding_rules("stem", [("stem_vocab", None)])


@registry.checks("stem")
def check(config):
  config_checks.check_decoder(config)
  m, s = config.model, config.model.stem
  one_of(config, "model.stem.table_init", tuple(stem.TABLE_INITS))
  one_of(config, "model.stem.lookup_impl", LOOKUPS)
  one_of(config, "optim.stem_update", stem_optim.UPDATES)
  require(not m.scan_layers, "model.scan_layers", "the STEM decoder mixes STEM and dense blocks: use False")
  if s.offload:  # dense Adam would read and write every host row each step: no offload gain
    require(config.optim.stem_update == "sparse_rows", "model.stem.offload",
            "needs optim.stem_update=sparse_rows (only the batch's rows leave host memory)")
    require(config.train.microbatches == 1, "model.stem.offload", "supports train.microbatches=1 only")
    require(not config.get("regularizer", {}).get("backslash", {}).get("enabled", False), "model.stem.offload",
            "BackSlash (regularizer.backslash.enabled) would rewrite the whole host tables every step")
  layers = s.layers
  if isinstance(layers, str):
    require(layers in stem.FRACTIONS, "model.stem.layers",
            f"{layers!r} is not a list or one of {list(stem.FRACTIONS)}")
  elif layers is not None:
    require(all(isinstance(i, int) and 0 <= i < m.n_layers for i in layers), "model.stem.layers",
            f"{list(layers)} must be layer indices in [0, model.n_layers={m.n_layers})")


@registry.step_variant("stem")
def step_variant(config):
  """The row step for sparse_rows (one microbatch; more use the standard step and a dense table gradient)."""
  if config.model.stem.offload:
    return stem_rows_step.OFFLOAD
  if config.optim.get("stem_update", "dense") == "sparse_rows" and config.train.microbatches == 1:
    return stem_rows_step.ROWS
  return None
