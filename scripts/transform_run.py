"""Transformed copies of a finished run: `quantize` (8-bit weight codes) and `deepshape` (GG histogram remap).

  scripts/quantize --workdir runs/x --format rf8 --out runs/x_rf8        (scripts/transform_run.py quantize ...)
  scripts/deepshape --workdir runs/x --out runs/x_ds [--shape-scale 0.8 ...]

Both read the source's latest params and write a new workdir: config.json, checkpoints/<source step>/ holding only
{step, params}, tb/ and summary.json (weight statistics before/after, eval loss of source and output). The output
is assembled under a hidden temporary name and renamed at the end: the source is never touched and a failure
leaves nothing behind. `scripts/eval` and `scripts/sample` read either output (quantized weights are decoded on the
fly through `model.weight_format`); `scripts/train --init-from` fine-tunes from a DeepShape output.
Exit codes: 0 done, 2 bad input (one line on stderr), 1 anything else.
"""
import argparse
import json
import os
import sys
import tempfile

import jax
import numpy as np

from tessera.losses import backslash_rule
from tessera.models import deepshape as deepshape_lib
from tessera.models import numerics
from tessera.models import quantized
from tessera.trainer import checkpoint as ckpt_lib
from tessera.trainer import config_loader
from tessera.trainer import inspect_run
from tessera.trainer import loop
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import metrics as metrics_lib
from tessera.trainer import optim
from tessera.trainer import state as state_lib
from tessera.trainer import workdir as workdir_lib
from tessera.trainer.config_loader import ConfigError


def parser():
  p = argparse.ArgumentParser(prog="transform_run", description=__doc__.splitlines()[0])
  commands = p.add_subparsers(dest="command", required=True)
  for name in ("quantize", "deepshape"):
    c = commands.add_parser(name)
    c.add_argument("--workdir", required=True, help="source run (config.json + checkpoints/)")
    c.add_argument("--out", required=True, help="new run directory (must not exist)")
    if name == "quantize":
      c.add_argument("--format", required=True, help=f"one of {list(numerics.FORMATS)}")
    else:
      c.add_argument("--shape-scale", type=float, default=0.8, help="target ν = shape_scale · ν̂")
      c.add_argument("--std-scale", type=float, default=0.6, help="target β = std_scale · β̂")
      c.add_argument("--adj-minnum", type=int, default=None,
                     help="tail-cut count (default 1000, or max(10, 1000·N/1e7) below 1e7 params)")
  return p


def check_args(args):
  """Every argument check that needs no device work."""
  source, out = ckpt_lib.absolute(args.workdir), ckpt_lib.absolute(args.out)
  if out.exists():
    raise ConfigError(f"--out: {out} already exists; choose a new directory (nothing was written)")
  if not (source / "config.json").exists():
    raise ConfigError(f"--workdir: {source}/config.json not found (not a tessera run)")
  if args.command == "quantize" and args.format not in numerics.FORMATS:
    raise ConfigError(f"--format: unknown number format {args.format!r}; known: {list(numerics.FORMATS)}")
  if args.command == "deepshape":
    for flag, value in (("--shape-scale", args.shape_scale), ("--std-scale", args.std_scale)):
      if not value > 0:
        raise ConfigError(f"{flag}: must be > 0, got {value}")
    if args.adj_minnum is not None and args.adj_minnum < 1:
      raise ConfigError(f"--adj-minnum: must be >= 1, got {args.adj_minnum}")
  return source, out


def load_source(source):
  """(config, factory, params, step) of the source's latest float checkpoint, checked against its config."""
  config = config_loader.from_json(source / "config.json")
  if config.model.get("weight_format", quantized.FLOAT) != quantized.FLOAT:
    raise ConfigError(f"--workdir: {source} holds {config.model.weight_format} codes, not float weights")
  step = ckpt_lib.latest_step(source)
  if step is None:
    raise ConfigError(f"--workdir: {source}/checkpoints has no checkpoint")
  with config.unlocked():
    config.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  factory = state_lib.StateFactory(config, mesh_lib.make_mesh(config))
  checkpointer = ckpt_lib.Checkpointer(source, config.checkpoint)
  saved = checkpointer.saved_shapes(step)
  saved_flat = {optim.path_str(p): tuple(getattr(leaf, "shape", ()))
                for p, leaf in jax.tree_util.tree_flatten_with_path(saved.get("params", {}))[0]}
  saved_flat.update({optim.path_str(p): tuple(getattr(leaf, "shape", ()))
                     for p, leaf in jax.tree_util.tree_flatten_with_path(saved.get("frozen", {}))[0]})
  for path, leaf in (jax.tree_util.tree_flatten_with_path(factory.abstract_params)[0] +
                     jax.tree_util.tree_flatten_with_path(factory.abstract_frozen)[0]):
    key = optim.path_str(path)
    if saved_flat.get(key) != tuple(leaf.shape):
      raise ConfigError(f"--workdir: checkpoint step {step} has {key} of shape {saved_flat.get(key)}, but the "
                        f"run's config expects {tuple(leaf.shape)} (not this model's params)")
  variables = inspect_run.restore_variables(checkpointer, step, factory)
  checkpointer.close()
  return config, factory, factory.all_params(variables["params"], variables["frozen"]), step


def state_bytes(workdir, step):
  """On-disk bytes of checkpoints/<step>/state (array data and metadata; local directories)."""
  root = str(ckpt_lib.directory(workdir) / str(step) / "state")
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def quantize(args, config, factory, params, step, tmp):
  """Writes the codes into `tmp`; returns the summary fields specific to quantization."""
  stored, nonfinite = jax.jit(lambda p: (quantized.encode_tree(p, args.format), quantized.nonfinite_count(p)))(params)
  with config.unlocked():
    config.model.weight_format = args.format
  stored_factory = state_lib.StateFactory(config, factory.mesh)
  stored = jax.device_put(stored, stored_factory.param_shardings)
  inspect_run.save_params(tmp, stored_factory, step, stored)
  with tempfile.TemporaryDirectory() as float_dir:  # the same params saved in fp32: the size baseline
    inspect_run.save_params(float_dir, factory, step, params)
    float_bytes = state_bytes(float_dir, step)
  host = jax.device_get(params)
  quantized_count = sum(int(np.size(w)) for w in jax.tree.leaves(host) if quantized.quantizable(w))
  return {"format": args.format, "rf8_nonfinite": int(nonfinite),
          "relative_rmse": quantized.relative_rmse(host, args.format),
          "params_quantized": quantized_count, "params_total": sum(int(np.size(w)) for w in jax.tree.leaves(host)),
          "checkpoint_bytes": state_bytes(tmp, step), "float_checkpoint_bytes": float_bytes,
          "size_ratio": float_bytes / state_bytes(tmp, step)}


def deepshape(args, config, factory, params, step, tmp):
  """Writes the remapped params into `tmp`; returns before/after weight statistics and the remap's info."""
  host = jax.device_get(params)
  reshaped, info = deepshape_lib.deepshape_tree(host, args.shape_scale, args.std_scale, args.adj_minnum)
  if not 0 < info["nu_target"] <= 3:
    raise ConfigError(f"--shape-scale: target shape {info['nu_target']:.3f} = {args.shape_scale} × ν̂ "
                      f"{info['nu']:.2f} is outside (0, 3]")
  print(f"deepshape: adj_minnum {info['adj_minnum']}, ν̂ {info['nu']:.2f} -> {info['nu_target']:.2f}, "
        f"β̂ {info['beta']:.4g} -> {info['beta_target']:.4g}, {info['n_in']} in range", file=sys.stderr)
  inspect_run.save_params(tmp, factory, step, jax.device_put(reshaped, factory.all_params(factory.param_shardings,
                                                                              factory.frozen_shardings)))
  return {"before": backslash_rule.weight_stats(host), "after": backslash_rule.weight_stats(reshaped),
          "deepshape": info}


def transform(args):
  source, out = check_args(args)
  config, factory, params, step = load_source(source)
  pipeline = loop.build_pipeline(config, source)
  trained, frozen = factory.split_params(params)
  variables = {"params": trained, "frozen": frozen, "model_state": {}}
  source_loss = inspect_run.evaluate_variables(config, factory, variables, pipeline)["eval_loss"]
  with workdir_lib.staged(out) as tmp:
    make = quantize if args.command == "quantize" else deepshape
    summary = {"step": step, "source": str(source), "source_eval_loss": source_loss,
               **make(args, config, factory, params, step, tmp)}
    workdir_lib.write_json(tmp / "config.json", config_loader.to_dict(config))
    summary["eval_loss"] = inspect_run.evaluate(tmp)["eval_loss"]  # read back from disk: the real round trip
    summary["eval_loss_change"] = summary["eval_loss"] - source_loss
    write_tensorboard(tmp, step, args.command, summary)
    workdir_lib.write_json(tmp / "summary.json", summary)
  return summary


def write_tensorboard(workdir, step, command, summary):
  writer = metrics_lib.Writer(workdir)
  writer.scalars(step, {"loss": summary["eval_loss"], "source_loss": summary["source_eval_loss"]}, "eval")
  scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and k != "step"}
  for stage in ("before", "after", "deepshape"):
    scalars.update({f"{stage}/{k}": v for k, v in summary.get(stage, {}).items() if "/" not in k})
  writer.scalars(step, scalars, command)
  writer.close()


def main(argv=None):
  args = parser().parse_args(sys.argv[1:] if argv is None else argv)
  try:
    summary = transform(args)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  keys = ("step", "format", "source_eval_loss", "eval_loss", "eval_loss_change", "relative_rmse", "size_ratio")
  print(json.dumps({k: summary[k] for k in keys if k in summary}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
