"""`eval` and `sample` on an existing workdir: rebuild the model from config.json, restore the latest params."""
import json

import jax
import numpy as np

from tessera import losses as _losses  # noqa: F401  (registers objectives)
from tessera.losses import registry as loss_registry
from tessera.trainer import checkpoint as ckpt_lib
from tessera.trainer import config_loader
from tessera.trainer import loop
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import sample as sample_lib
from tessera.trainer import state as state_lib
from tessera.trainer import step as step_lib
from tessera.trainer.config_loader import ConfigError


def load(workdir):
  """(config, factory, params, step, pipeline) of the latest checkpoint; the mesh is rebuilt for this host."""
  workdir = ckpt_lib.absolute(workdir)
  if not (workdir / "config.json").exists():
    raise ConfigError(f"--workdir: {workdir}/config.json not found (not a tessera run)")
  config = config_loader.from_json(workdir / "config.json")
  step = ckpt_lib.latest_step(workdir)
  if step is None:
    raise ConfigError(f"--workdir: {workdir}/checkpoints has no checkpoint")
  with config.unlocked():
    config.mesh.update(dict(data=-1, fsdp=1, tensor=1))  # any device count can read any checkpoint
  factory = state_lib.StateFactory(config, mesh_lib.make_mesh(config))
  checkpointer = ckpt_lib.Checkpointer(workdir, config.checkpoint)
  params = checkpointer.restore_params(step, factory.abstract_params_sharded())
  checkpointer.close()
  pipeline = loop.build_pipeline(config)
  return config, factory, params, step, pipeline


def evaluate(workdir, batches=None):
  config, factory, params, step, pipeline = load(workdir)
  return {"step": step, **evaluate_params(config, factory, params, pipeline, batches)}


def evaluate_params(config, factory, params, pipeline, batches=None):
  """{"eval_loss", "batches"} of `params` (in the factory's stored form) on the run's eval batches."""
  eval_step = step_lib.make_eval_step(factory, loss_registry.get(config.loss.name)(config.loss))
  sharding = mesh_lib.batch_sharding(factory.mesh)
  rows = mesh_lib.local_rows(sharding, config.train.batch_size)
  losses = []
  for local in pipeline.eval_batches(batches or config.eval.batches, rows):
    batch = {k: jax.make_array_from_process_local_data(sharding, v, (config.train.batch_size,) + v.shape[1:])
             for k, v in local.items()}
    losses.append(float(jax.device_get(eval_step(params, batch))["loss"]))
  return {"eval_loss": float(np.mean(losses)), "batches": len(losses)}


def main(command, args):
  """Every process computes (params are sharded over all of them); process 0 prints."""
  if command == "eval":
    output = json.dumps(evaluate(args.workdir, args.batches))
  else:
    config, factory, params, step, pipeline = load(args.workdir)
    output = args.prompt + sample_lib.generate(factory, params, pipeline.tokenizer, args.prompt,
                                               args.max_new_tokens, config.train.seq_len,
                                               temperature=args.temperature, seed=args.seed)
  if jax.process_index() == 0:
    print(output)
  return 0
