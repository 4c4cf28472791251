"""Trainer overhead and CPU throughput benchmark (see scripts/bench).

Default: the trainer's real loop vs a bare jitted loop over the same quickstart model, optimizer and batches,
interleaved segments, repeated; reports the median step-time ratio `trainer_vs_bare_ratio` (goal >= 0.97),
plus the quickstart model's mfu, tokens_per_second and compile_seconds.
--shapes a,b: tokens/s and CPU MFU of the reference shapes in fp32 and bf16 compute (fp32 params).
--stem: STEM vs dense step time at equal shape, dense AdamW vs the sparse-row table update (scripts/bench_stem.py).
--frozen: gate-only (frozen backbone) vs full training: compiled FLOPs and step time (scripts/bench_frozen.py).
"""
import argparse
import json
import statistics
import sys
import tempfile
import time

import jax

from tessera.trainer import cli, loop, step as step_lib

SHAPES = {  # name: (d_model, n_layers, n_heads, d_ff, vocab, seq_len, batch)
    "a": (256, 4, 4, 1024, 8192, 256, 16),
    "b": (512, 8, 8, 2048, 32000, 512, 8),
}


def bare_step_time(run, batches, steps):
  """Median seconds per step of a bare `jax.jit` loop (same model, optimizer, batches), blocking only at the end."""
  factory = run.factory
  loss_fn = factory.objective.loss_fn

  def bare(state, batch):
    model = lambda p: factory.model(p, state["frozen"], state["model_state"])
    grad_fn = jax.value_and_grad(lambda p: loss_fn(model(p), batch, None)[0])
    loss, grads = grad_fn(state["params"])
    updates, opt_state = factory.tx.update(grads, state["opt_state"], state["params"])
    params = jax.tree.map(lambda p, u: p + u, state["params"], updates)
    return {**state, "params": params, "opt_state": opt_state, "step": state["step"] + 1}, loss

  bare = jax.jit(bare, donate_argnums=0)
  with factory.context():
    state = factory.init(run.config.seed)
    state, loss = bare(state, batches[0])
    loss.block_until_ready()
    times = []
    for i in range(steps):
      start = time.perf_counter()
      state, loss = bare(state, batches[i % len(batches)])
      loss.block_until_ready()
      times.append(time.perf_counter() - start)
  return statistics.median(times)


def trainer_segment(config_spec, overrides, workdir, steps):
  """Runs the real trainer loop for `steps` more steps in `workdir`; returns (median step time, summary)."""
  config, _ = cli.load_config(config_spec, {**overrides, "train.steps": steps})
  run = loop.Run(config, workdir).setup()
  summary = run.train()
  times = [t for s, t in sorted(run.step_times.items()) if s > (run.latest or 0) + 2]
  return statistics.median(times), summary, run


def overhead(args):
  overrides = {"eval.every_steps": 0, "checkpoint.every_steps": 0, "checkpoint.every_seconds": 0.0,
               "sample.max_new_tokens": 1, "optim.warmup_steps": 0}
  ratios, rows = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for repeat in range(args.repeats):
      trainer_time, summary, run = trainer_segment(args.config, overrides, tmp, (repeat + 1) * args.steps)
      batches = [run.global_batch(b) for b, _ in zip(run.data.train_batches(0, run.rows), range(4))]
      bare_time = bare_step_time(run, batches, args.steps)
      ratios.append(bare_time / trainer_time)
      rows.append({"trainer_step_s": trainer_time, "bare_step_s": bare_time})
      print(f"repeat {repeat}: trainer {trainer_time * 1e3:.1f} ms/step, bare {bare_time * 1e3:.1f} ms/step, "
            f"ratio {ratios[-1]:.3f}", file=sys.stderr)
    checkpoint_block = checkpoint_blocking(args.config, overrides, tmp, (args.repeats + 1) * args.steps)
    compile_seconds = {"cached": compile_time(run, True), "uncached": compile_time(run, False)}
  return {"trainer_vs_bare_ratio": statistics.median(ratios), "repeats": rows, "mfu": summary["mfu"],
          "tokens_per_second": summary["tokens_per_second"], "compile_seconds": compile_seconds["cached"],
          "compile_seconds_without_cache": compile_seconds["uncached"],
          "checkpoint_block_over_step_time": checkpoint_block}


def checkpoint_blocking(config_spec, overrides, workdir, start):
  """Median time an async checkpoint save holds up the loop, in units of the median step time (goal <= 2)."""
  overrides = {**overrides, "checkpoint.every_steps": 3}
  step_time, _, run = trainer_segment(config_spec, overrides, workdir, start + 12)
  blocks = [t for s, t in run.save_seconds.items() if s > start + 3]  # the first save in a process sets up Orbax
  return statistics.median(blocks) / step_time


def compile_time(run, cache):
  """Seconds to lower and compile the trainer's step, with or without the persistent compilation cache."""
  train_step = step_lib.make_train_step(run.factory)
  b, t = run.config.train.batch_size, run.config.train.seq_len
  batch = {k: jax.ShapeDtypeStruct((b, t), "float32" if k == "loss_mask" else "int32")
           for k in ("inputs", "targets", "segment_ids", "positions", "loss_mask")}
  previous = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", cache)
  try:
    start = time.perf_counter()
    with run.factory.context():
      train_step.lower(run.factory.abstract_state(), batch).compile()
    return time.perf_counter() - start
  finally:
    jax.config.update("jax_enable_compilation_cache", previous)


def shapes(names, steps):
  """Each reference shape: a plain Flax/optax fp32 step, then tessera's loop in fp32 and bf16 compute, one run."""
  import bench_plain
  out = {}
  for name in names:
    d, n_layers, heads, d_ff, vocab, seq_len, batch = SHAPES[name]
    model = {"model.d_model": d, "model.n_layers": n_layers, "model.n_heads": heads, "model.n_kv_heads": heads,
             "model.d_ff": d_ff, "model.vocab_size": vocab, "train.seq_len": seq_len, "train.batch_size": batch}
    plain_config, _ = cli.load_config("configs/lm.py:small", model)
    plain_tps = batch * seq_len / bench_plain.step_seconds(plain_config.model, batch, seq_len, steps)
    out[f"{name}_plain_flax_float32"] = {"tokens_per_second": plain_tps}
    print(name, "plain flax float32", json.dumps(out[f"{name}_plain_flax_float32"]), file=sys.stderr)
    for dtype in ("float32", "bfloat16"):
      overrides = {**model, "model.dtype": dtype, "eval.every_steps": 0, "eval.batches": 1,
                   "checkpoint.every_steps": 0, "checkpoint.every_seconds": 0.0, "sample.max_new_tokens": 1}
      with tempfile.TemporaryDirectory() as tmp:
        step_time, summary, _ = trainer_segment("configs/lm.py:small", overrides, tmp, steps + 2)
      tps = batch * seq_len / step_time
      out[f"{name}_{dtype}"] = {"tokens_per_second": tps, "vs_plain_flax_fp32": tps / plain_tps,
                                "mfu": summary["mfu"]}
      print(name, dtype, json.dumps(out[f"{name}_{dtype}"]), file=sys.stderr)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json", help="write the results here")
  p.add_argument("--config", default="configs/quickstart.py",
                 help="the config whose overhead is measured (default: %(default)s)")
  p.add_argument("--steps", type=int, default=12, help="steps per segment")
  p.add_argument("--repeats", type=int, default=5,
                 help="timed repeats per segment; the best counts (default: %(default)s)")
  p.add_argument("--shapes", help="comma-separated reference shapes (a,b) to measure instead of the overhead")
  p.add_argument("--stem", action="store_true", help="STEM rows (scripts/bench_stem.py) instead of the overhead")
  p.add_argument("--frozen", action="store_true", help="gate-only vs full training (scripts/bench_frozen.py)")
  args = p.parse_args()
  results = {"jax": jax.__version__, "devices": jax.device_count()}
  if args.frozen:
    import bench_frozen
    results["frozen"] = bench_frozen.run(rounds=args.repeats, steps=args.steps)
  elif args.stem:
    import bench_stem
    results["stem"] = bench_stem.run(steps=min(args.steps, 10), rounds=args.repeats)
  elif args.shapes:
    results["shapes"] = shapes(args.shapes.split(","), args.steps)
  else:
    results.update(overhead(args))
  text = json.dumps(results, indent=2)
  print(text)
  if args.json:
    with open(args.json, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
