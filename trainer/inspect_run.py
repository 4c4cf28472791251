"""`eval` and `sample` on an existing workdir: rebuild the model from config.json, restore the latest params."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from tessera.trainer import checkpoint as ckpt_lib
from tessera.trainer import config_loader
from tessera.trainer import loop
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import sample as sample_lib
from tessera.trainer import state as state_lib
from tessera.trainer import step as step_lib
from tessera.trainer.config_loader import ConfigError


def load(workdir):
  """(config, factory, params, step, pipeline) of the latest checkpoint, `params` the whole tree (trained and
  frozen: what `factory.model(params)` takes); the mesh is rebuilt for this host."""
  config, factory, variables, step, pipeline = load_variables(workdir)
  return config, factory, factory.all_params(variables["params"], variables["frozen"]), step, pipeline


def load_variables(workdir):
  """(config, factory, {"params", "frozen", "model_state"}, step, pipeline) of the latest checkpoint."""
  workdir = ckpt_lib.absolute(workdir)
  if not (workdir / "config.json").exists():
    raise ConfigError(f"--workdir: {workdir}/config.json not found (not a tessera run)")
  config = config_loader.from_json(workdir / "config.json")
  from tessera.trainer import cli
  cli.validate_keys(config, workdir / "config.json")
  if ckpt_lib.latest_step(workdir) is None:
    raise ConfigError(f"--workdir: {workdir}/checkpoints has no checkpoint")
  with config.unlocked():
    config.mesh.update(dict(data=-1, fsdp=1, tensor=1))  # any device count can read any checkpoint
  pipeline = loop.build_pipeline(config, workdir)
  factory = state_lib.StateFactory(config, mesh_lib.make_mesh(config))
  checkpointer = ckpt_lib.Checkpointer(workdir, config.checkpoint)
  try:
    step, variables = restore_newest_intact(checkpointer, factory)
  finally:
    checkpointer.close()
  return config, factory, variables, step, pipeline


def restore_newest_intact(checkpointer, factory):
  """(step, variables) of the newest step that restores and verifies. Read-only: a corrupt newer step is reported
  in one line and skipped, not moved (training moves it aside); none intact is a ConfigError."""
  error = None
  for step in reversed(checkpointer.all_steps()):
    try:
      variables = restore_variables(checkpointer, step, factory)
    except ckpt_lib.CorruptCheckpoint as e:
      error = error or e
      continue
    if error is not None and jax.process_index() == 0:
      print(f"warning: {error}; using step {step}", file=sys.stderr, flush=True)
    return step, variables
  raise ConfigError(f"{error}; no intact checkpoint in {checkpointer.directory}")


def restore_variables(checkpointer, step, factory):
  """The saved params, frozen params and model state, verified against the step's digest (trees a checkpoint
  lacks, e.g. in scripts' outputs that store only params, come back empty). Raises CorruptCheckpoint."""
  saved = checkpointer.saved_shapes(step)
  item = {k: v for k, v in factory.abstract_variables().items() if k in saved and jax.tree.leaves(v)}
  restored = checkpointer._read(step, state=ocp.args.PyTreeRestore(  # noqa: SLF001  (one package)
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
  checkpointer._verify(step, restored[ckpt_lib.STATE], restored.get(ckpt_lib.DIGEST))  # noqa: SLF001
  return {k: restored[ckpt_lib.STATE].get(k, {}) for k in state_lib.TREES}


def save_params(workdir, factory, step, params):
  """Writes a run's checkpoint of whole `params` as {step, params, frozen} (split as `factory`'s run splits them):
  what eval, sample and init.workdir read. For scripts that write runs (quantize, imports, transfers)."""
  trained, frozen = factory.split_params(params)
  checkpointer = ckpt_lib.Checkpointer(workdir, factory.config.checkpoint)
  checkpointer.save(step, {"step": jnp.asarray(step, jnp.int32), "params": trained, "frozen": frozen},
                    {"next_batch": 0})
  checkpointer.close()


def evaluate(workdir, batches=None):
  config, factory, variables, step, pipeline = load_variables(workdir)
  return {"step": step, **evaluate_variables(config, factory, variables, pipeline, batches)}


def evaluate_variables(config, factory, variables, pipeline, batches=None):
  """{"eval_loss", "batches"} of `variables` (params in the factory's stored form) on the run's eval batches."""
  eval_step = step_lib.make_eval_step(factory)
  sharding = mesh_lib.batch_sharding(factory.mesh)
  rows = mesh_lib.local_rows(sharding, config.train.batch_size)
  losses = []
  for local in pipeline.eval_batches(batches or config.eval.batches, rows):
    batch = {k: jax.make_array_from_process_local_data(sharding, v, (config.train.batch_size,) + v.shape[1:])
             for k, v in local.items()}
    losses.append(float(jax.device_get(eval_step(variables, batch))["loss"]))
  return {"eval_loss": float(np.mean(losses)), "batches": len(losses)}


def main(command, args):
  """Every process computes (params are sharded over all of them); process 0 prints."""
  if command == "eval":
    output = json.dumps(evaluate(args.workdir, args.batches))
  else:  # sample: flags checked before loading; stdout holds only the prompts and their continuations
    output = sample_lib.run(args, load)
  if jax.process_index() == 0:
    print(output)
  return 0
