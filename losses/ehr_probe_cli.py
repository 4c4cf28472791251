"""scripts/probe: linear probes on a finished (or checkpointed) EHR world-model run (jepa_ehr.md §7, issue 14).

  scripts/probe --workdir runs/ehr-small --tasks all            # or --tasks long_term_slope,short_term
  scripts/probe --workdir runs/ehr-small --compare runs/ehr-sft runs/ehr-curriculum   # objectives in one plot

Restores the latest checkpoint's params and model state (the EMA target when the run has one; a run without JEPA
state is probed too, labelled SFT-only), reads the labels of the run's prepared data (`data.path`, or the
preparer's <workdir>/data/prepared), prints one line per (task, node) and writes <out>/probe.{json,md,png}
(default out: <workdir>/probe). Bad input: one line on stderr, exit 2, nothing written.
"""
import argparse
import json
import pathlib
import sys

from tessera.data.prepare_io import STATS_FILE

PREPARED = "prepared"  # tessera.data.ehr_cuts.PREPARED


class ProbeError(ValueError):
  pass


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="scripts/probe", description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, type=pathlib.Path)
  parser.add_argument("--tasks", default="all", help="'all' or comma-separated label file names")
  parser.add_argument("--out", type=pathlib.Path, default=None, help="default: <workdir>/probe")
  parser.add_argument("--compare", type=pathlib.Path, nargs="*", default=[], metavar="WORKDIR",
                      help="other probed runs whose <workdir>/probe/probe.json join probe.png (one line per objective)")
  parser.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples (default: the run's probe key)")
  return parser.parse_args(argv)


def probe_config(config):
  """The run's config with the probe keys a run of another method lacks (a plain decoder on MEDS)."""
  import ml_collections
  with config.unlocked():
    if "probe" not in config:
      config.probe = ml_collections.ConfigDict(dict(at_end=False, tasks="all", bootstrap=1000, iterations=500,
                                                    batch=64))
  return config


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    return run(args)
  except (ProbeError, FileNotFoundError) as e:
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 2


def run(args) -> int:
  workdir = args.workdir.resolve()
  if not (workdir / "config.json").is_file():
    raise ProbeError(f"--workdir: {workdir}/config.json not found (not a tessera run)")
  from tessera.trainer import checkpoint as ckpt_lib
  from tessera.trainer import config_loader
  from tessera.trainer import inspect_run
  from tessera.trainer import mesh as mesh_lib
  from tessera.trainer import state as state_lib
  config = probe_config(config_loader.from_json(workdir / "config.json"))
  data = pathlib.Path(config.data.path) if config.data.path else workdir / "data" / PREPARED
  if not (data / STATS_FILE).is_file():
    raise ProbeError(f"--workdir: the run's prepared data {data} is missing (data.path or <workdir>/data)")
  if not sorted((data / "labels").glob("*.parquet")):
    raise ProbeError(f"{data / 'labels'}: no label files to probe")
  others = []
  for other in args.compare:
    path = other / "probe" / "probe.json"
    if not path.is_file():
      raise ProbeError(f"--compare: {path} not found (probe that run first)")
    others.append(json.loads(path.read_text()))
  step = ckpt_lib.latest_step(workdir)
  if step is None:
    raise ProbeError(f"--workdir: {workdir}/checkpoints has no checkpoint")
  if args.bootstrap:
    with config.unlocked():
      config.probe.bootstrap = args.bootstrap
  with config.unlocked():
    config.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  factory = state_lib.StateFactory(config, mesh_lib.make_mesh(config))
  checkpointer = ckpt_lib.Checkpointer(workdir, config.checkpoint)
  variables = inspect_run.restore_variables(checkpointer, step, factory)
  checkpointer.close()
  from tessera.data import ehr_cuts
  from tessera.losses import ehr_probe
  windows = ehr_cuts.NodeWindows(data, config.data.get("ctx_len", config.train.seq_len))
  with factory.context():
    model = factory.model(variables["params"], variables["frozen"], variables["model_state"])
    if not hasattr(model, "target"):
      ehr_probe.note("the run has no JEPA state (no EMA target): probing it as SFT-only")
    ehr_probe.run(config, model, windows, args.out or workdir / "probe", args.tasks, step=step,
                  others=others)
  return 0


if __name__ == "__main__":
  sys.exit(main())
