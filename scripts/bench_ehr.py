"""Cost of the JEPA dual forward pass (issue 14): the jitted train step of configs/ehr_jepa.py with λ = 1 (online
forward + backward, EMA-target forward, predictor, EMA update) against λ = 0 (`:sft_only`: no target forward) at the
same shape, interleaved segments, median step times.

  .venv/bin/python scripts/bench_ehr.py --variant tiny --segments 6 --steps 5
"""
import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_rounds  # noqa: E402

from tessera.configs import ehr_jepa
from tessera.data import ehr_cuts
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import state as state_lib


def build(variant, weight, seed=0):
  c = ehr_jepa.build(variant)
  c.model.vocab_size = 128
  c.loss.jepa.weight = weight
  factory = state_lib.StateFactory(c, mesh_lib.make_mesh(c))
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, 119, (c.train.batch_size, c.train.seq_len)).astype(np.int32)
  batch = ehr_cuts.row_fields([(t, c.data.ctx_len - 1, c.train.seq_len - 1) for t in tokens], 0, c.data.fut_len)
  return bench_rounds.compiled(factory, batch)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="tiny", help="configs/ehr_jepa.py variant to time")
  parser.add_argument("--segments", type=int, default=6, help="interleaved timing rounds per objective")
  parser.add_argument("--steps", type=int, default=5, help="steps timed per round")
  args = parser.parse_args(argv)
  runs = {"sft+jepa": build(args.variant, 1.0), "sft_only": build(args.variant, 0.0)}
  times = bench_rounds.interleaved(runs, args.segments, args.steps)
  median = bench_rounds.medians(times)
  result = {"variant": args.variant, "step_seconds": median, "ratio": median["sft+jepa"] / median["sft_only"]}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
