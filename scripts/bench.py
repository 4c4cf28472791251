"""Trainer overhead and CPU throughput benchmark (see scripts/bench).

Default: the trainer's real loop vs a bare jitted loop over the same quickstart model, optimizer and batches,
interleaved segments, repeated; reports the median step-time ratio `trainer_vs_bare_ratio` (goal >= 0.97),
plus the quickstart model's mfu, tokens_per_second and compile_seconds.
--shapes a,b: the reference shapes at a plain trainer's math (model.mlp="gelu", tied, MHA): scripts/bench_plain.py's
plain Flax/optax step beside tessera's real loop, fp32 and bf16 compute, alternating, --rounds rounds; JSON
`shapes.<shape>.<policy>.vs_plain`, `shapes.<shape>.best.vs_plain`, achieved GFLOP/s and `peaks` (GFLOP/s) (issue 20).
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

SHAPES = {  # name: (d_model, n_layers, n_heads, d_ff, vocab, seq_len, batch); d_ff of the GELU MLP (issue 20)
    "a": (256, 4, 4, 1024, 8192, 256, 16),
    "b": (512, 8, 8, 2048, 32000, 512, 8),
    "tiny": (64, 2, 4, 256, 512, 64, 4),  # smoke test only
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


POLICIES = ("float32", "bfloat16")  # model.dtype (compute); params stay fp32 on both sides


SHAPE_CONFIG = "configs/lm.py:base"  # its data: a BPE of the embedded corpus at the shape's vocabulary (cached)


def shape_overrides(name, policy):
  """tessera's overrides of SHAPE_CONFIG for a reference shape at the plain step's math (GELU MLP, tied, MHA)."""
  d, n_layers, heads, d_ff, vocab, seq_len, batch = SHAPES[name]
  return {"model.d_model": d, "model.n_layers": n_layers, "model.n_heads": heads, "model.n_kv_heads": heads,
          "model.d_ff": d_ff, "model.vocab_size": vocab, "model.mlp": "gelu", "model.tie_embeddings": True,
          "model.dtype": policy, "model.remat": "none", "model.scan_layers": False, "data.bpe_vocab_size": vocab,
          "train.seq_len": seq_len, "train.batch_size": batch, "eval.every_steps": 0,
          "eval.batches": 1, "checkpoint.every_steps": 0, "checkpoint.every_seconds": 0.0,
          "sample.max_new_tokens": 1}


def peaks_gflops():
  """The CPU's fp32 and bf16 (fp32 accumulation) 1024^3 matmul rates, measured now (best of 10)."""
  from tessera.trainer import cpu_peak
  return {dtype: cpu_peak.measure(dtype) / 1e9 for dtype in POLICIES}


def rate(tokens_per_second, flops_per_token, peak):
  gflops = tokens_per_second * flops_per_token / 1e9
  return {"tokens_per_second": tokens_per_second, "gflops": gflops, "fp32_peak_fraction": gflops / peak}


def shapes(names, steps, rounds, extra=None, profile_dir=None):
  """Per shape: the plain step (scripts/bench_plain.py) and tessera's real loop, each precision policy, alternating
  within every round (plain f32, tessera f32, plain bf16, tessera bf16), `rounds` rounds; medians of the rounds.

  `vs_plain` is the median of the per-round ratios of tokens/s at one policy; `best.vs_plain` the median of the
  per-round ratios of tessera's best policy to the plain step's best. `extra`: more tessera overrides (a lever).
  """
  import bench_plain
  from tessera.models import decoder
  peaks = peaks_gflops()
  out = {"peaks": peaks, "shapes": {}}
  for name in names:
    d, n_layers, heads, d_ff, vocab, seq_len, batch = SHAPES[name]
    tokens = batch * seq_len
    plain = {p: bench_plain.PlainTrainer(vocab, d, n_layers, heads, d_ff, seq_len, batch, p) for p in POLICIES}
    seconds = {(side, p): [] for side in ("plain", "tessera") for p in POLICIES}
    config, ops = None, {}
    for r in range(rounds):
      for policy in POLICIES:
        seconds["plain", policy].append(plain[policy].run(steps))
        overrides = {**shape_overrides(name, policy), **(extra or {})}
        with tempfile.TemporaryDirectory() as tmp:
          step_s, _, run = trainer_segment(SHAPE_CONFIG, overrides, tmp, steps + 2)
          if r == 0 and profile_dir:
            ops[policy] = profile(run, plain[policy], f"{profile_dir}/{name}_{policy}")
        seconds["tessera", policy].append(step_s)
        config = run.config
        print(f"{name} round {r} {policy}: plain {tokens / seconds['plain', policy][-1]:,.0f} tokens/s, tessera "
              f"{tokens / step_s:,.0f} tokens/s", file=sys.stderr)
    flops = decoder.train_flops_per_token(config.model, seq_len)
    tps = {k: [tokens / s for s in v] for k, v in seconds.items()}
    row = {"flops_per_token": flops}
    for policy in POLICIES:
      ratios = [t / p for t, p in zip(tps["tessera", policy], tps["plain", policy])]
      row[policy] = {**rate(statistics.median(tps["tessera", policy]), flops, peaks["float32"]),
                     "vs_plain": statistics.median(ratios), "vs_plain_rounds": ratios,
                     "plain": rate(statistics.median(tps["plain", policy]), flops, peaks["float32"])}
    best = max(POLICIES, key=lambda p: row[p]["tokens_per_second"])
    plain_best = max(POLICIES, key=lambda p: row[p]["plain"]["tokens_per_second"])
    ratios = [max(tps["tessera", p][r] for p in POLICIES) / max(tps["plain", p][r] for p in POLICIES)
              for r in range(rounds)]
    from tessera.trainer import dtype_policy
    row["best"] = {"policy": best, "plain_policy": plain_best, "auto_policy": dtype_policy.choose(),
                   "vs_plain": statistics.median(ratios), "vs_plain_rounds": ratios,
                   **rate(row[best]["tokens_per_second"], flops, peaks["float32"])}
    if ops:
      row["ops"] = ops
    out["shapes"][name] = row
    print(name, json.dumps({p: round(row[p]["vs_plain"], 3) for p in (*POLICIES, "best")}), file=sys.stderr)
  return out


def profile(run, plain, where, steps=3):
  """jax.profiler traces (TensorBoard + perfetto) of `steps` steps of tessera's compiled train step (the loop's own
  step function, on one of its batches) and of the plain step, with each step's HLO, under `where`/{tessera,plain};
  prints each one's op-time breakdown by model region (scripts/bench_ops.py) and returns them."""
  import pathlib
  import bench_ops
  import bench_rounds
  batch = run.global_batch(next(iter(run.data.train_batches(0, run.rows))))
  compiled = bench_rounds.compiled(run.factory, batch)
  with run.factory.context():
    tessera_hlo = compiled["step"].lower(compiled["state"], batch).compile().as_text()
  plain_hlo = plain.step.lower(plain.params, plain.opt_state, plain.inputs, plain.targets).compile().as_text()
  out = {}
  for side, hlo in (("tessera", tessera_hlo), ("plain", plain_hlo)):
    with jax.profiler.trace(f"{where}/{side}", create_perfetto_trace=True):
      if side == "tessera":
        bench_rounds.interleaved({"tessera": compiled}, 1, steps)
      else:
        plain.run(steps)
    (pathlib.Path(where) / side / "hlo.txt").write_text(hlo)
    (pathlib.Path(where) / side / "steps.json").write_text(json.dumps({"steps": steps}))
    rows = bench_ops.breakdown(f"{where}/{side}", steps)
    out[side] = {name: {"ms_per_step": ms, "share": share} for name, ms, share in rows}
    print(f"{where}/{side}:\n{bench_ops.markdown(rows)}", file=sys.stderr)
  return out


def parse_overrides(items):
  import ast
  out = {}
  for item in items or []:
    key, _, value = item.partition("=")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json", help="write the results here")
  p.add_argument("--config", default="configs/quickstart.py",
                 help="the config whose overhead is measured (default: %(default)s)")
  p.add_argument("--steps", type=int, default=12, help="steps per segment")
  p.add_argument("--repeats", type=int, default=5,
                 help="timed repeats per segment; the best counts (default: %(default)s)")
  p.add_argument("--shapes", help="comma-separated reference shapes (a,b; tiny for a smoke test) to measure, "
                 "side by side with the plain step, instead of the overhead")
  p.add_argument("--rounds", type=int, default=3, help="--shapes: alternating rounds (default: %(default)s)")
  p.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="--shapes: a tessera config override (a lever to A/B, e.g. loss.fused_ce_chunk=1024)")
  p.add_argument("--profile", metavar="DIR", help="--shapes: write jax.profiler traces of both steps here")
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
    if args.profile:  # an executable from the persistent cache keeps the source metadata of the code that filled it
      jax.config.update("jax_enable_compilation_cache", False)
    results.update(shapes(args.shapes.split(","), args.steps, args.rounds, parse_overrides(args.set),
                          args.profile))
  else:
    results.update(overhead(args))
  text = json.dumps(results, indent=2)
  print(text)
  if args.json:
    with open(args.json, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
