#!/usr/bin/env python3
"""Fans `--sweep` out for cluster launchers: one line of shell-quoted trainer arguments per sweep point.

  launch/sweep_args.py --config configs/lm.py:small --workdir gs://b/run --sweep
  -> --config configs/lm.py:small --workdir gs://b/run/optim.lr=0.001,seed=0 --config.optim.lr=0.001 --config.seed=0
     ...

The points, their validation and their workdirs are the trainer's own (tessera.trainer.cli.plan_train and
sweep_name), so a job launched per line runs exactly what `--sweep` would have run in one process.
Without --sweep it prints the arguments back as one line. Bad config: one error line, exit 2.
"""
import shlex
import sys


def sweep_lines(argv):
  from tessera.trainer import cli, config_loader
  runs, _ = cli.plan_train(argv)  # validates every point up front
  args, rest = cli.parser("train").parse_known_args(argv)
  base = [a for a in argv if a != "--sweep"]
  if not args.sweep:
    return [shlex.join(base)]
  _, module = config_loader.load(cli.resolve_config_path(args.config))
  without_workdir = _drop_option(base, "--workdir")
  lines = []
  for (_, workdir), point in zip(runs, module.sweep()):
    overrides = [f"--config.{k}={v!r}" for k, v in point.items()]
    lines.append(shlex.join(without_workdir + ["--workdir", workdir] + overrides))
  return lines


def _drop_option(argv, name):
  out, skip = [], False
  for a in argv:
    if skip:
      skip = False
    elif a == name:
      skip = True
    elif not a.startswith(name + "="):
      out.append(a)
  return out


def main(argv=None):
  from tessera.trainer.config_loader import ConfigError
  try:
    lines = sweep_lines(sys.argv[1:] if argv is None else list(argv))
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
