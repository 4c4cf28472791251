"""Command line: `python -m tessera.trainer [train|eval|sample] --config FILE[:ARG] --config.a.b=V ...`.

Multi-process jobs add `--coordinator HOST:PORT --num-processes N --process-id I` (or the environment: see
tessera.trainer.distributed; launch/ sets it up). Parsing, overrides and the spine's validation import only
ml_collections; the methods' key checks then import the zoo. A bad flag fails in about a second with one line on
stderr (exit 2) and nothing written. Exit codes: 0 done, 2 bad config or input, 1 anything else.
"""
import argparse
import pathlib
import re
import sys

from tessera.data.prepare_io import DataError
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
  return str(pathlib.Path("runs") / (pathlib.Path(path).with_suffix("").name + (f"_{arg}" if arg else "")))


def positive_int(text):
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
  return value


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
  """{'optim.lr': 0.001, 'seed': 1} -> 'optim.lr=0.001,seed=1' (safe as a folder name)."""
  text = ",".join(f"{k}={v}" for k, v in overrides.items())
  return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)


def load_config(spec, overrides, check_methods=True):
  """A config file (`path.py[:arg]`, or a run's `config.json`) with overrides applied and validated: the spine's
  keys, then (`check_methods`) the model's and rules' own keys."""
  if spec.endswith(".json"):
    if not pathlib.Path(spec).is_file():
      raise ConfigError(f"--config: no such file {spec!r}")
    config, module = config_loader.from_json(spec), None
  else:
    config, module = config_loader.load(resolve_config_path(spec))
  config_loader.apply_overrides(config, overrides)
  config_loader.apply_hook(config, module, overrides)
  if config.get("model", {}).get("dtype") == "auto":  # resolved here, once: config.json records the choice
    from tessera.trainer import dtype_policy
    dtype_policy.resolve(config)
  validate_keys(config, spec)
  if check_methods:
    from tessera.trainer import zoo  # imports the zoo (jax): after the cheap checks
    zoo.check(config)
  return config, module


class OneLineParser(argparse.ArgumentParser):
  """argparse that reports a bad flag as one `error:` line (not usage + error) and exits 2, like every input error."""

  def error(self, message):
    print(f"error: {self.prog}: {message} (--help lists the flags)", file=sys.stderr)
    sys.exit(2)


def validate_keys(config, source):
  """The spine's checks; a config lacking one of the spine's keys (a hand-edited config.json) names its file."""
  try:
    validate.validate(config)
  except (AttributeError, KeyError, TypeError) as e:
    raise ConfigError(f"{source}: not a complete tessera config ({str(e).strip().splitlines()[0][:200]})") from None


def parser(command):
  p = OneLineParser(prog=f"tessera {command}", description=__doc__.splitlines()[0],
                              epilog="multi-process: --coordinator HOST:PORT --num-processes N --process-id I")
  if command == "train":
    p.add_argument("--config", help=f"config file, optionally with :variant, or a run's config.json (default: "
                                     f"--workdir's config.json when it has one, else {DEFAULT_CONFIG})")
    p.add_argument("--workdir", help="run directory (default runs/<config>[_<variant>])")
    p.add_argument("--sweep", action="store_true", help="run every override set of the config's sweep()")
    p.add_argument("--init-from", dest="init_from",
                   help="start from another run's latest params (step 0): init.workdir=W, init.strict=True")
  else:
    p.add_argument("--workdir", required=True, help="a run directory with config.json and checkpoints/")
  if command == "eval":
    p.add_argument("--batches", type=positive_int, help="eval batches (default: the run's eval.batches)")
  if command == "sample":  # checked in tessera.trainer.sample (one-line errors, exit 2)
    p.add_argument("--prompt", help="one prompt (printed with its continuation)")
    p.add_argument("--prompts", metavar="FILE", help="one prompt per line, decoded as one batch; one output line "
                   "each (newlines in a continuation escaped as \\n)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens generated per prompt (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus: the smallest set with this mass (1 = all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--kv-policy", default="full", help="KV cache policy: full (every token), window, sink_window "
                   "(StreamingLLM), h2o (heavy hitters + recent), random, or one a model registers (models/kv_cache.py)")
    p.add_argument("--kv-budget", type=int, help="M: entries kept per layer and KV head (every policy but full)")
    p.add_argument("--kv-buffer", type=int, help="B: entries written between evictions (default max(8, M // 4))")
    p.add_argument("--kv-sinks", type=int, help="S: first tokens sink_window always keeps (default 4)")
  return p


def plan_train(argv):
  """Parse and validate everything up front: [(config, workdir)] (one per sweep point) and --init-from."""
  args, rest = parser("train").parse_known_args(argv)
  overrides = split_overrides(rest)
  spec = args.config
  if spec is None:  # continue an existing run from its saved config (runs written by scripts, e.g. a transfer)
    saved = pathlib.Path(args.workdir or "", "config.json")
    spec = str(saved) if args.workdir and saved.is_file() else DEFAULT_CONFIG
  if args.init_from:
    if not pathlib.Path(args.init_from).is_dir():
      raise ConfigError(f"--init-from: {args.init_from} is not a directory")
    overrides = {**overrides, "init.workdir": str(pathlib.Path(args.init_from).resolve()), "init.strict": True}
  config, module = load_config(spec, overrides)
  workdir = args.workdir or default_workdir(spec)
  if not args.sweep:
    return [(config, workdir)], args.init_from
  if module is None or not hasattr(module, "sweep"):
    raise ConfigError(f"--sweep: {args.config} defines no sweep()")
  runs = []
  for point in module.sweep():
    config, _ = load_config(spec, {**overrides, **point})
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
  except (ConfigError, DataError) as e:  # DataError: bad data met after the build (e.g. a token id >= V)
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
      if isinstance(e, loop.Stopped):  # every process stopped at the same step: leave the group together
        distributed.shutdown()
      return 1
    raise
