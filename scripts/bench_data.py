"""scripts/bench_data: how much faster the prepared pipeline feeds batches than the quickstart step eats them,
measured in one run, plus MEDS prepare throughput.

  scripts/bench_data [--json PATH] [--steps 12] [--batches 200] [--workers 0,2]

A user command, not part of tessera.data: it drives the trainer (and data must never import the trainer).

1. Writes the embedded corpus as .jsonl and prepares it (byte tokenizer: the quickstart's vocabulary).
2. Times the prepared pipeline at the quickstart shape (batch 16 x 128) with each worker count.
3. Trains the quickstart config on that directory for a few steps through tessera.trainer.loop.Run and takes the
   median step time (first steps, which compile, excluded): the tokens/s the step consumes.
4. Prepares the MIMIC-IV demo (when ../shared/data is present) and a synthetic MEDS set: events/s.
"""

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

from tessera.configs import quickstart
from tessera.data import embedded_corpus
from tessera.data import meds_synth
from tessera.data import prepare_meds
from tessera.data import prepare_text
from tessera.data import prepared

MIMIC = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mimic-iv-demo-meds"


def pipeline_tokens_per_second(path, seq_len, batch_size, workers, num_batches) -> float:
  pipeline = prepared.PreparedPipeline(path, seq_len=seq_len, global_batch_size=batch_size, seed=0,
                                       workers=workers, prefetch=4)
  batches = pipeline.train_batches(0, slice(None))
  for _ in range(5):  # worker start-up and the first prefetches are not throughput
    next(batches)
  began = time.perf_counter()
  for _ in range(num_batches):
    next(batches)
  seconds = time.perf_counter() - began
  batches.close()
  return num_batches * batch_size * seq_len / seconds


def trainer_tokens_per_second(path, workdir, steps) -> float:
  from tessera.trainer import loop  # jax starts only here
  c = quickstart.get_config()
  with c.unlocked():
    c.data.path = str(path)
    c.train.steps = steps
    c.eval.update(every_steps=0, batches=1)
    c.checkpoint.update(every_steps=0, every_seconds=0.0)
    c.sample.max_new_tokens = 4
  run = loop.Run(c, workdir).setup()
  run.train()
  times = [t for step, t in sorted(run.step_times.items()) if step > 3]
  return c.train.batch_size * c.train.seq_len / statistics.median(times)


def meds_events_per_second(meds_dir, out) -> tuple[int, float]:
  stats = prepare_meds.prepare(["--input", str(meds_dir), "--out", str(out)])
  return stats["events"], stats["events_per_second"]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="scripts/bench_data", description=" ".join(__doc__.split("\n\n")[0].split()))
  parser.add_argument("--json", type=pathlib.Path, default=None, metavar="PATH",
                      help="also write the results as JSON to PATH")
  parser.add_argument("--steps", type=int, default=12,
                      help="quickstart train steps timed for the step's appetite (the first 3 excluded; "
                           "default: %(default)s)")
  parser.add_argument("--batches", type=int, default=200,
                      help="batches read per pipeline timing (default: %(default)s)")
  parser.add_argument("--workers", default="0,2",
                      help="comma-separated grain worker counts to time the pipeline with (default: %(default)s)")
  parser.add_argument("--synthetic-subjects", type=int, default=1000,
                      help="subjects in the synthetic MEDS set whose preparation is timed (default: %(default)s)")
  args = parser.parse_args(argv)
  c = quickstart.get_config()
  results = {"seq_len": c.train.seq_len, "batch_size": c.train.batch_size}
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d.text}) + "\n" for d in embedded_corpus.documents()))
    prepare_text.prepare(["--input", str(corpus), "--out", str(tmp / "text"), "--tokenizer", "bytes"])
    for workers in [int(w) for w in args.workers.split(",")]:
      results[f"pipeline_tokens_per_second_{workers}_workers"] = pipeline_tokens_per_second(
          tmp / "text", c.train.seq_len, c.train.batch_size, workers, args.batches)
    results["step_tokens_per_second"] = trainer_tokens_per_second(tmp / "text", tmp / "run", args.steps)
    if MIMIC.is_dir():
      results["mimic_events"], results["mimic_events_per_second"] = meds_events_per_second(MIMIC, tmp / "mimic")
    synth = meds_synth.write_dataset(tmp / "synth", args.synthetic_subjects, seed=0)
    results["synthetic_events"], results["synthetic_events_per_second"] = meds_events_per_second(
        synth, tmp / "synth_out")

  step = results["step_tokens_per_second"]
  print(f"\nquickstart step consumes {step:,.0f} tokens/s (batch {c.train.batch_size} x {c.train.seq_len})")
  for key, value in results.items():
    if key.startswith("pipeline_tokens_per_second_"):
      workers = key.removeprefix("pipeline_tokens_per_second_").split("_")[0]
      print(f"prepared pipeline, {workers} workers: {value:,.0f} tokens/s = {value / step:.1f}x the step")
  for name in ("mimic", "synthetic"):
    if f"{name}_events" in results:
      print(f"prepare_meds {name}: {results[f'{name}_events']:,} events at "
            f"{results[f'{name}_events_per_second']:,.0f} events/s")
  if args.json:
    args.json.write_text(json.dumps(results, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
