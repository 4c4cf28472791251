"""Frozen-weight training vs full training of the same model (scripts/bench --frozen; issue 10's measures).

Gate-only training, as TRIM-KV trains: `configs/lm.py:small` with only a small module in every block trainable
(each block's attention RMSNorm, `train.trainable=attn_norm`) and everything else in state["frozen"], against
training every parameter. Reports the compiled step's FLOPs (XLA cost_analysis) and the step time, both steps
timed in interleaved rounds in one process on the same batches (median of the per-round ratios).

  python scripts/bench_frozen.py --config configs/trimkv.py:small --trainable retention_gate   # TRIM-KV's gates
(the same model and objective, distillation teacher included, with every parameter trainable as the baseline).
"""
import argparse
import json
import statistics
import sys
import time

import jax
import numpy as np

from tessera.trainer import cli, mesh as mesh_lib, state as state_lib, step as step_lib

GATE_ONLY = "attn_norm"


def _step(config_spec, trainable, overrides):
  config, _ = cli.load_config(config_spec, {**overrides, "train.trainable": trainable})
  factory = state_lib.StateFactory(config, mesh_lib.make_mesh(config))
  return factory, step_lib.make_train_step(factory)


def _batch(config, seed):
  b, t = config.train.batch_size, config.train.seq_len
  tokens = np.random.default_rng(seed).integers(0, config.model.vocab_size, (b, t + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.zeros((b, t), np.int32),
          "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)), "loss_mask": np.ones((b, t), np.float32)}


def compiled_flops(factory, train_step, batch):
  with factory.context():
    compiled = train_step.lower(factory.abstract_state(), batch).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis["flops"])


def run(config_spec="configs/lm.py:small", rounds=7, steps=6, gate_only=GATE_ONLY, extra=None):
  overrides = {"model.vocab_size": 384, **(extra or {})}
  rows = {name: _step(config_spec, trainable, overrides) for name, trainable in (("full", ".*"),
                                                                                  ("gate_only", gate_only))}
  config = rows["full"][0].config
  batches = [_batch(config, i) for i in range(4)]
  out = {"config": config_spec, "overrides": overrides, "trainable_gate_only": gate_only}
  states = {}
  for name, (factory, train_step) in rows.items():
    out[f"{name}_flops"] = compiled_flops(factory, train_step, batches[0])
    out[f"{name}_trained_params"] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(factory.abstract_params))
    with factory.context():
      states[name], metrics = train_step(factory.init(0), batches[0])  # compile + warm up
      jax.block_until_ready(metrics)
  ratios = []
  for r in range(rounds):
    times = {}
    for name, (factory, train_step) in rows.items():
      with factory.context():
        start = time.perf_counter()
        for i in range(steps):
          states[name], metrics = train_step(states[name], batches[i % len(batches)])
        jax.block_until_ready(metrics)
        times[name] = (time.perf_counter() - start) / steps
    ratios.append(times["gate_only"] / times["full"])
    print(f"round {r}: full {times['full'] * 1e3:.1f} ms/step, gate-only {times['gate_only'] * 1e3:.1f} ms/step, "
          f"ratio {ratios[-1]:.3f}", file=sys.stderr)
  out["flops_ratio"] = out["gate_only_flops"] / out["full_flops"]
  out["step_time_ratio"] = statistics.median(ratios)
  out["step_time_ratios"] = ratios
  return out


def main(argv=None):
  p = argparse.ArgumentParser(prog="scripts/bench_frozen.py", description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/lm.py:small", help="config (default: %(default)s)")
  p.add_argument("--trainable", default=GATE_ONLY, help="the gate-only train.trainable regex (default: %(default)s)")
  p.add_argument("--seq-len", type=int, help="train.seq_len override")
  p.add_argument("--batch-size", type=int, help="train.batch_size override")
  p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default: %(default)s)")
  p.add_argument("--steps", type=int, default=4, help="steps per round (default: %(default)s)")
  args = p.parse_args(argv)
  extra = {k: v for k, v in (("train.seq_len", args.seq_len), ("train.batch_size", args.batch_size)) if v}
  print(json.dumps(run(args.config, args.rounds, args.steps, args.trainable, extra), indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
