"""Ahead-of-time compile of the train step for N devices: per-device memory against a budget, before a long job.

  scripts/compile_check --config configs/lm.py:base --devices 64 --hbm-gb 95 --config.mesh.fsdp=-1 --config.mesh.data=1
  scripts/compile_check --config configs/lm.py:base --topology "TPU v5p:4x4x4" --hbm-gb 95     # needs libtpu

Without --topology the step is compiled for N fake CPU devices (XLA's SPMD partitioning is the same; the CPU
backend's buffer assignment stands in for the accelerator's, see docs/scale.md for how close that is). Prints one
line per memory kind, one line per tensor of every non-default optimizer group (a method's own tables, e.g. STEM's
`stem_table`s: stem.md §7 wants them listed apart from the total) and a JSON line; exit 0 when the peak fits the
budget, 1 when it does not, 2 on bad input.
"""
import argparse
import json
import os
import sys

GB = 1e9


class Parser(argparse.ArgumentParser):
  """A bad flag is one `error:` line and exit 2."""

  def error(self, message):
    print(f"error: {self.prog}: {message}", file=sys.stderr)
    sys.exit(2)


def parse(argv):
  p = Parser(prog="scripts/compile_check", description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True, help="config file, optionally with :variant")
  p.add_argument("--devices", type=int, help="number of fake CPU devices to compile for")
  p.add_argument("--hbm-gb", type=float, required=True, dest="hbm_gb", help="per-device memory budget in GB (1e9)")
  p.add_argument("--topology", help="compile for a real topology, e.g. 'TPU v5p:2x2x1' (needs the platform plugin)")
  p.add_argument("--platform", default="tpu", help="platform of --topology (default tpu)")
  return p.parse_known_args(argv)


def main(argv=None):
  args, rest = parse(sys.argv[1:] if argv is None else argv)
  problem = ("give exactly one of --devices N or --topology NAME" if (args.devices is None) == (args.topology is None)
             else f"--devices: must be >= 1, got {args.devices}" if args.devices is not None and args.devices < 1
             else f"--hbm-gb: must be a finite number > 0, got {args.hbm_gb}" if not 0 < args.hbm_gb < float("inf")
             else None)
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  if args.devices is not None:
    os.environ["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={args.devices}"])

  from tessera.trainer import cli
  from tessera.trainer.config_loader import ConfigError
  try:
    config, _ = cli.load_config(args.config, cli.split_overrides(rest))
    report = check(config, args)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for key in ("arguments", "outputs", "aliased", "temporaries", "generated_code", "peak"):
    print(f"{key:>15}: {report[key + '_gb']:12.6f} GB per device")
  for t in report["group_tensors"]:
    grad = "the batch's rows only" if t["gradient_gb"] is None else f"{t['gradient_gb']:.6f} GB"
    total = t["param_gb"] + t["optimizer_gb"] + (t["gradient_gb"] or 0.0)
    print(f"{'table':>15}: {total:12.6f} GB per device  {t['path']} {t['shape']} {t['dtype']} in {t['memory']} "
          f"memory (shard {t['shard_shape']}; group {t['group']} '{t['pattern']}', update {t['update']}): "
          f"param {t['param_gb']:.6f} + optimizer state {t['optimizer_gb']:.6f} GB + gradient {grad}")
  verdict = "fits" if report["fits"] else "DOES NOT FIT"
  print(f"{verdict}: peak {report['peak_gb']:.4f} GB of {args.hbm_gb:g} GB per device "
        f"({report['peak_gb'] / args.hbm_gb:.1%}) on {report['devices']} devices, mesh {report['mesh']}")
  print(json.dumps(report))
  return 0 if report["fits"] else 1


def check(config, args):
  """Lower and compile the real train step on abstract inputs; memory_analysis() is per device."""
  import jax
  from jax.sharding import AxisType
  from tessera.trainer import loop, memory_check, mesh as mesh_lib, state as state_lib, step as step_lib, validate

  pipeline = loop.build_pipeline(config)
  loop.resolve_vocab_size(config, pipeline.vocab_size)
  if args.topology:
    from jax.experimental import topologies
    try:
      devices = topologies.get_topology_desc(args.topology, args.platform).devices
    except Exception as e:  # noqa: BLE001  (no plugin, unknown name: both are input errors here)
      raise loop.ConfigError(f"--topology {args.topology!r}: {str(e).splitlines()[0][:200]} "
                             f"(needs the {args.platform} plugin)") from None
  else:
    devices = jax.devices()
  validate.validate(config, len(devices))
  sizes = validate.mesh_shape(config, len(devices))
  mesh = jax.make_mesh(tuple(sizes[a] for a in mesh_lib.AXES), mesh_lib.AXES, devices=devices,
                       axis_types=(AxisType.Auto,) * len(mesh_lib.AXES))
  factory = state_lib.StateFactory(config, mesh)
  train_step = step_lib.make_train_step(factory)
  example = pipeline.eval_batches(1, slice(0, config.train.batch_size))[0]
  batch = {k: jax.ShapeDtypeStruct((config.train.batch_size,) + v.shape[1:], v.dtype) for k, v in example.items()}
  with factory.context():
    compiled = train_step.lower(factory.abstract_state(), batch).compile()
  m = compiled.memory_analysis()
  peak = memory_check.peak_bytes(m)  # the state is donated: arguments + outputs - aliased + temporaries + code
  return {
      "devices": len(devices), "mesh": {a: sizes[a] for a in mesh_lib.AXES},
      "arguments_gb": m.argument_size_in_bytes / GB, "outputs_gb": m.output_size_in_bytes / GB,
      "aliased_gb": m.alias_size_in_bytes / GB, "temporaries_gb": m.temp_size_in_bytes / GB,
      "generated_code_gb": m.generated_code_size_in_bytes / GB, "peak_gb": peak / GB,
      "budget_gb": args.hbm_gb, "fits": peak <= args.hbm_gb * GB, "group_tensors": group_tensors(factory),
  }


def group_tensors(factory):
  """Per-device bytes of each tensor in a non-default optimizer group: the parameter shard, the optimizer-state leaves
  that mirror it (AdamW's mu and nu) and its gradient (a dense param-shaped gradient for AdamW; an update that
  differentiates w.r.t. gathered rows, like sparse_rows, materialises only the batch's rows: None) and its memory
  kind (a host-offloaded table lives in pinned_host memory, outside the device peak)."""
  import jax
  import numpy as np
  from tessera.trainer import optim

  def shard_gb(leaf):
    return int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * np.dtype(leaf.dtype).itemsize / GB

  state = factory.abstract_state()
  labels = {optim.path_keys(p): label for p, label in jax.tree_util.tree_flatten_with_path(factory.labels)[0]}
  opt = [(optim.path_keys(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]]
  patterns = {f"group{i}": g["pattern"] for i, g in enumerate(factory.config.optim.groups)}
  rows = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state["params"])[0]:
    keys = optim.path_keys(path)
    group = labels[keys]
    if group == optim.DEFAULT:
      continue
    update = factory.updates[group]
    rows.append({
        "path": "/".join(keys), "group": group, "pattern": patterns[group], "update": update,
        "shape": list(leaf.shape), "dtype": str(leaf.dtype), "shard_shape": list(leaf.sharding.shard_shape(leaf.shape)),
        "param_gb": shard_gb(leaf),
        "optimizer_gb": sum(shard_gb(o) for k, o in opt if k[-len(keys):] == keys and o.shape == leaf.shape),
        "gradient_gb": shard_gb(leaf) if update == optim.ADAMW else None,
        "memory": leaf.sharding.memory_kind or "device",
    })
  return rows


if __name__ == "__main__":
  sys.exit(main())
