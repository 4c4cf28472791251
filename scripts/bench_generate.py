"""Decode speed and cache memory of the generation engine vs a window-recompute sampler (see scripts/bench_generate).

The model is built here (a Llama decoder meant for seq_len 2048: d_model 256, 4 layers, 8 heads / 4 KV heads,
d_ff 1024, byte vocabulary; random weights: speed does not depend on them). At each context length c (256, 1024,
2048), batch 1:
  recompute  the old sampler, kept here as the baseline: one jitted forward over a fixed window of c tokens per
             new token (zero-padded, logits at the last real position): no cache, quadratic work;
  full       the engine after a c-token prompt: one jitted decode step per token over a cache of c + n slots;
  bounded    the engine with `window` M=128 (buffer 32): a 160-slot cache whatever c is.
`--model trimkv` gives the same decoder retention gates (TRIM-KV, gate hidden 512, random weights) and bounds its
cache with the `trimkv` policy (M=128, buffer 32: eviction by the gates' log beta scores).
Decode tokens/s is the best of `--repeats` timed runs of n steps after a warm-up (compile excluded); cache bytes are
the engine's cache arrays (k, v, positions, lengths, scores), and for recompute the K/V it rebuilds every step.
"""
import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from tessera.models import generate, kv_cache, registry

CONTEXTS = (256, 1024, 2048)
BOUNDED = kv_cache.Policy("window", budget=128)
MODEL = dict(name="decoder", vocab_size=384, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, head_dim=0,
             d_ff=1024, rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=True, dtype="float32",
             param_dtype="float32", remat="none", scan_layers=False, attention_impl="xla", init="normal",
             init_std=0.02)
SEQ_LEN = 2048  # the training context this model stands for; the recompute window never exceeds it


def cpu_name():
  for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
    if line.startswith("model name"):
      return line.split(":", 1)[1].strip()
  return "unknown"


def build(name="decoder"):
  cfg = ConfigDict({**MODEL, "name": name})
  if name == "trimkv":
    cfg.trimkv = ConfigDict(dict(gate="rg", gate_hidden=512, gate_bias_init=10.0, gate_init_std=0.02,
                                 retention_mode="mul_logit"))
  with nnx.use_eager_sharding(False):
    return registry.get(name)(cfg, nnx.Rngs(0))


def recompute_sampler(model):
  """next_token(tokens_1xW, length): the pre-cache sampler, re-running the model over the whole window."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def next_token(state, tokens_1xW, length):
    logits_1xWxV = nnx.merge(graphdef, state)(tokens_1xW)
    return jnp.argmax(logits_1xWxV[0, length - 1])

  return lambda tokens_1xW, length: next_token(state, tokens_1xW, length)


def time_recompute(model, context, steps, repeats):
  step = recompute_sampler(model)
  tokens_1xW = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, context)), jnp.int32)
  step(tokens_1xW, context).block_until_ready()  # compile
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      token = step(tokens_1xW, context)  # the old loop read every token back to build the next window
      int(token)
    best = min(best, time.perf_counter() - start)
  E = MODEL["d_model"] // MODEL["n_heads"]
  kv_bytes = MODEL["n_layers"] * 2 * context * MODEL["n_kv_heads"] * E * 4
  return {"tokens_per_second": steps / best, "kv_bytes": kv_bytes}


def time_engine(engine, policy, context, steps, repeats):
  """Best decode tokens/s over `steps` steps after a `context`-token prompt; (result, cache bytes)."""
  prompt_1xP = np.random.default_rng(0).integers(0, 256, (1, context)).astype(np.int32)
  lengths_B = np.array([context], np.int32)
  policy = policy.resolve(context, steps + 1)
  best, nbytes = float("inf"), None
  for r in range(repeats + 1):  # run 0 compiles
    token_B, _, cache, done_B = engine.prefill(prompt_1xP, lengths_B, policy)
    token_B.block_until_ready()
    start = time.perf_counter()
    for i in range(1, steps + 1):
      token_B, _, cache, done_B = engine.decode(cache, token_B, lengths_B + i - 1, done_B, i)
    token_B.block_until_ready()
    if r:
      best = min(best, time.perf_counter() - start)
    nbytes = cache.nbytes()
  return {"tokens_per_second": steps / best, "cache_bytes": int(nbytes), "capacity": policy.capacity}


def main(argv=None):
  p = argparse.ArgumentParser(prog="bench_generate", description=__doc__.splitlines()[0])
  p.add_argument("--json", help="also write the results to this file")
  p.add_argument("--steps", type=int, default=64, help="decode steps timed per engine run")
  p.add_argument("--recompute-steps", type=int, default=8, help="tokens timed per recompute run")
  p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (best is kept)")
  p.add_argument("--contexts", default=",".join(map(str, CONTEXTS)), help="comma-separated context lengths")
  p.add_argument("--model", choices=("decoder", "trimkv"), default="decoder",
                 help="decoder (bounded: window) or trimkv (the decoder with retention gates; bounded: trimkv)")
  args = p.parse_args(argv)
  contexts = [int(c) for c in args.contexts.split(",")]
  if max(contexts) > SEQ_LEN:
    print(f"error: --contexts: at most the model's seq_len {SEQ_LEN}", file=sys.stderr)
    return 2
  start = time.perf_counter()
  model = build(args.model)
  engine = generate.Engine(model)
  bounded = BOUNDED if args.model == "decoder" else kv_cache.Policy("trimkv", budget=BOUNDED.budget)
  result = {"cpu": cpu_name(), "devices": jax.device_count(), "model": {**MODEL, "name": args.model,
                                                                         "seq_len": SEQ_LEN},
            "bounded_policy": {"name": bounded.name, "budget": bounded.budget, "capacity": bounded.capacity},
            "contexts": {}}
  for c in contexts:
    row = {"recompute": time_recompute(model, c, args.recompute_steps, args.repeats),
           "full": time_engine(engine, kv_cache.Policy(), c, args.steps, args.repeats),
           "bounded": time_engine(engine, bounded, c, args.steps, args.repeats)}
    row["full_vs_recompute"] = row["full"]["tokens_per_second"] / row["recompute"]["tokens_per_second"]
    row["bounded_vs_full"] = row["bounded"]["tokens_per_second"] / row["full"]["tokens_per_second"]
    row["bounded_cache_fraction"] = row["bounded"]["cache_bytes"] / row["full"]["cache_bytes"]
    result["contexts"][str(c)] = row
    print(f"context {c:5d}: recompute {row['recompute']['tokens_per_second']:8.1f} tok/s | full "
          f"{row['full']['tokens_per_second']:8.1f} tok/s, {row['full']['cache_bytes'] / 2**20:6.2f} MiB "
          f"({row['full_vs_recompute']:.1f}x recompute) | {bounded.name} M={bounded.budget} "
          f"{row['bounded']['tokens_per_second']:8.1f} tok/s, {row['bounded']['cache_bytes'] / 2**20:6.2f} MiB",
          file=sys.stderr, flush=True)
  if "1024" in result["contexts"]:
    result["goal_full_vs_recompute_at_1024"] = {"target": 10.0,
                                                "measured": result["contexts"]["1024"]["full_vs_recompute"]}
  result["seconds"] = time.perf_counter() - start
  text = json.dumps(result, indent=2)
  print(text)
  if args.json:
    pathlib.Path(args.json).write_text(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
