"""Command line: `python -m tessera.trainer [train|eval|sample] --config FILE[:ARG] --config.a.b=V ...`.

Multi-process jobs add `--coordinator HOST:PORT --num-processes N --process-id I` (or the environment: see
tessera.trainer.distributed; launch/ sets it up). Parsing, overrides and validation import only ml_collections, so a bad flag fails in well under a second with one
line on stderr (exit 2) and nothing written. Exit codes: 0 done, 2 bad config or input, 1 anything else.
"""
import argparse
import pathlib
import re
import sys

from tessera.trainer import config_loader
from tessera.trainer import distributed
from tessera.trainer import validate
from tessera.trainer.config_loader import ConfigError

DEFAULT_CONFIG = "configs/quickstart.py"


def resolve_config_path(spec):
  """Relative paths work from the repo root or anywhere (falling back to the shipped configs/ folder)."""
  path, sep, arg = spec.partition(":")
  if not pathlib.Path(path).exists():
    import tessera.configs
    shipped = pathlib.Path(tessera.configs.__file__).parent / pathlib.Path(path).name
    if shipped.exists():
      path = str(shipped)
  return path + sep + arg


def default_workdir(spec):
  path, _, arg = spec.partition(":")
  return str(pathlib.Path("runs") / (pathlib.Path(path).stem + (f"_{arg}" if arg else "")))


def split_overrides(rest):
  """['--config.a.b=1', '--config.c', '2'] -> {'a.b': 1, 'c': 2}; anything else is an error."""
  overrides, i = {}, 0
  while i < len(rest):
    arg = rest[i]
    match = re.fullmatch(r"--config\.([A-Za-z0-9_.]+)(?:=(.*))?", arg, flags=re.S)
    if not match:
      raise ConfigError(f"unrecognized argument {arg!r} (overrides look like --config.optim.lr=1e-3)")
    key, value = match.group(1), match.group(2)
    if value is None:
      if i + 1 >= len(rest):
        raise ConfigError(f"config key {key!r}: missing value")
      value, i = rest[i + 1], i + 1
    overrides[key] = config_loader.parse_value(value)
    i += 1
  return overrides


def sweep_name(overrides):
  """{'optim.lr': 0.001, 'seed': 1} -> 'optim.lr=0.001,seed=1' (filesystem-safe)."""
  text = ",".join(f"{k}={v}" for k, v in overrides.items())
  return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)


def load_config(spec, overrides):
  config, module = config_loader.load(resolve_config_path(spec))
  config_loader.apply_overrides(config, overrides)
  validate.validate(config)
  return config, module


def parser(command):
  p = argparse.ArgumentParser(prog=f"tessera {command}", description=__doc__.splitlines()[0],
                              epilog="multi-process: --coordinator HOST:PORT --num-processes N --process-id I")
  if command == "train":
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config file, optionally with :variant")
    p.add_argument("--workdir", help="run directory (default runs/<config>[_<variant>])")
    p.add_argument("--sweep", action="store_true", help="run every override set of the config's sweep()")
    p.add_argument("--init-from", dest="init_from", help="start from another run's latest params (step 0)")
  else:
    p.add_argument("--workdir", required=True, help="a run directory with config.json and checkpoints/")
  if command == "eval":
    p.add_argument("--batches", type=int, help="eval batches (default: the run's eval.batches)")
  if command == "sample":
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=0)
  return p


def plan_train(argv):
  """Parse and validate everything up front: [(config, workdir)] (one per sweep point) and --init-from."""
  args, rest = parser("train").parse_known_args(argv)
  overrides = split_overrides(rest)
  config, module = load_config(args.config, overrides)
  workdir = args.workdir or default_workdir(args.config)
  if not args.sweep:
    return [(config, workdir)], args.init_from
  if not hasattr(module, "sweep"):
    raise ConfigError(f"--sweep: {args.config} defines no sweep()")
  runs = []
  for point in module.sweep():
    config, _ = load_config(args.config, {**overrides, **point})
    runs.append((config, f"{workdir.rstrip('/')}/{sweep_name(point)}"))  # not pathlib: keeps gs:// intact
  return runs, args.init_from


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  command = argv.pop(0) if argv and argv[0] in ("train", "eval", "sample") else "train"
  try:
    join_flags, argv = distributed.split_flags(argv)  # --coordinator/--num-processes/--process-id
    group = distributed.plan(join_flags)
    if command == "train":
      runs, init_from = plan_train(argv)
      distributed.initialize(group)  # after validation (bad flags exit 2 fast), before any device use
      from tessera.trainer import loop
      for config, workdir in runs:
        run = loop.Run(config, workdir, init_from)
        if run.finished():
          print(f"already at step {run.latest} (train.steps={config.train.steps}) in {workdir}; nothing to do")
          continue
        run.setup().train()
      distributed.shutdown()
      return 0
    args = parser(command).parse_args(argv)
    distributed.initialize(group)
    from tessera.trainer import inspect_run
    code = inspect_run.main(command, args)
    distributed.shutdown()
    return code
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 1
  except distributed.DistributedError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except Exception as e:  # noqa: BLE001  (the loop's own errors carry their message; others keep the traceback)
    from tessera.trainer import loop
    if isinstance(e, (loop.NonFiniteLoss, loop.Stopped)):
      print(f"error: {e}", file=sys.stderr)
      return 1
    raise
