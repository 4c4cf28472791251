"""ZeTT hypernetwork step cost (issue 13): the jitted main-stage train step of configs/zett.py with the
length-bucketed encoder (models/zett_buckets.py) against the plain [N, L] encoder, same model and batch,
interleaved rounds, median step times.

  .venv/bin/python scripts/bench_zett.py --variant small --segments 4 --steps 2

The batch's surface forms follow the piece-count histogram of a sampled `:small` vocabulary (docs/zett.md:
1292/568/147/23/5/3/11 tokens with 1..7 pieces); the LM is randomly initialised (cost does not depend on its weights).
"""
import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_rounds  # noqa: E402

from tessera.configs import zett as zett_config
from tessera.models import zett_buckets
from tessera.trainer import cpu_peak
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import state as state_lib

HISTOGRAM = (1292, 568, 147, 23, 5, 3, 11)  # tokens with 1..7 pieces in a sampled n_total = 2048 vocabulary


def batch_for(c, seed=0):
  rng = np.random.default_rng(seed)
  B, T, L, n = c.train.batch_size, c.train.seq_len, c.model.zett.maxlen, c.model.zett.n_slots
  counts = np.repeat(np.arange(1, 8), HISTOGRAM)[:n]
  counts = rng.permutation(np.concatenate([counts, np.ones(n - len(counts), int)]))
  pad = 0
  surface = np.where(np.arange(L) < counts[:, None], rng.integers(1, c.model.vocab_size, (n, L)), pad)
  tokens = rng.integers(0, n - 128, (B, T + 1))
  return {"surface": surface.reshape(B, -1, L).astype(np.int32), "special": np.full((B, n // B), -1, np.int32),
          "valid": (np.arange(n) < n - 128).astype(np.int32).reshape(B, -1), "pad_id": np.full((B,), pad, np.int32),
          "inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32),
          "loss_mask": np.ones((B, T), np.float32), "target_bytes": np.full((B, T), 3.0, np.float32),
          "stage": np.zeros((B,), np.int32), "step": np.full((B,), 10 ** 6, np.int32)}


def build(variant, bucketed):
  c = zett_config.build(variant)
  c.model.vocab_size = c.data.bpe_vocab_size
  factory = state_lib.StateFactory(c, mesh_lib.make_mesh(c))
  batch = batch_for(c)
  plain = lambda encode, pieces_NxL: encode(pieces_NxL)
  original = zett_buckets.encode_by_length
  zett_buckets.encode_by_length = original if bucketed else plain  # read while tracing the first call only
  try:
    return bench_rounds.compiled(factory, batch)
  finally:
    zett_buckets.encode_by_length = original


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="small", help="configs/zett.py hypernetwork variant to time")
  parser.add_argument("--segments", type=int, default=4, help="interleaved timing rounds per encoder")
  parser.add_argument("--steps", type=int, default=2, help="steps timed per round")
  args = parser.parse_args(argv)
  runs = {"bucketed": build(args.variant, True), "plain": build(args.variant, False)}
  times = bench_rounds.interleaved(runs, args.segments, args.steps)
  median = bench_rounds.medians(times)
  print(json.dumps({"variant": args.variant, "cpu": cpu_peak.cpu_model(),
                    "step_seconds": median, "ratio_bucketed_to_plain": median["bucketed"] / median["plain"],
                    "rounds": times}))


if __name__ == "__main__":
  main()
