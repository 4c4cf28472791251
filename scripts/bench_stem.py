"""`scripts/bench --stem`: STEM vs its dense twin at equal shape, and dense AdamW vs the sparse-row table update.

Three rows through the trainer's own jitted step (StateFactory + make_train_step), same shape, same Zipf-distributed
token batches (natural-text-like: few ids are frequent), timed in interleaved rounds so load drifts hit all rows:
  dense             model.stem.layers=[]  (SwiGLU everywhere)
  stem_dense_adamw  STEM layers, optim.stem_update=dense (the paper's optimizer: every table row every step)
  stem_sparse_rows  STEM layers, optim.stem_update=sparse_rows (only the batch's unique rows)
"""
import statistics
import sys
import time

import jax
import numpy as np

from tessera import losses  # noqa: F401  (registers objectives)
from tessera.configs import stem as stem_configs
from tessera.models import registry as model_registry
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import state as state_lib
from tessera.trainer import step as step_lib

SHAPE = dict(d_model=128, n_layers=4, n_heads=4, d_ff=384, vocab_size=32768, seq_len=128, batch_size=8)
ROWS = {"dense": ([], "dense"), "stem_dense_adamw": ([1, 3], "dense"), "stem_sparse_rows": ([1, 3], "sparse_rows")}


def config(layers, update, shape):
  c = stem_configs.build("small")
  c.model.update({k: shape[k] for k in ("d_model", "n_layers", "n_heads", "d_ff", "vocab_size")})
  c.model.n_kv_heads = shape["n_heads"]
  c.model.stem.layers = layers
  c.train.update(dict(seq_len=shape["seq_len"], batch_size=shape["batch_size"], steps=1000))
  c.optim.update(dict(stem_update=update, warmup_steps=10))
  return c


def zipf_batches(shape, count, seed=0):
  rng = np.random.default_rng(seed)
  B, T, V = shape["batch_size"], shape["seq_len"], shape["vocab_size"]
  out = []
  for _ in range(count):
    t = np.minimum(rng.zipf(1.2, (B, T + 1)) - 1, V - 1).astype(np.int32)
    out.append({"inputs": t[:, :-1], "targets": t[:, 1:], "segment_ids": np.zeros((B, T), np.int32),
                "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1)),
                "loss_mask": np.ones((B, T), np.float32)})
  return out


def run(shape=SHAPE, steps=10, rounds=3):
  batches = zipf_batches(shape, 4)
  runners = {}
  for name, (layers, update) in ROWS.items():
    c = config(layers, update, shape)
    c.mesh.data = jax.device_count()
    factory = state_lib.StateFactory(c, mesh_lib.make_mesh(c))
    step = step_lib.make_train_step(factory)
    with factory.context():
      state = factory.init(0)
      state, metrics = step(state, batches[0])  # compile
      jax.block_until_ready(metrics)
    counts = model_registry.ACCOUNTING["stem"](c.model, shape["seq_len"])
    runners[name] = {"factory": factory, "step": step, "state": state, "times": [], "counts": counts}
  for _ in range(rounds):
    for name, r in runners.items():
      with r["factory"].context():
        for i in range(steps):
          start = time.perf_counter()
          r["state"], metrics = r["step"](r["state"], batches[i % len(batches)])
          jax.block_until_ready(metrics)
          r["times"].append(time.perf_counter() - start)
  unique = [len(np.unique(b["inputs"])) for b in batches]
  tokens = shape["batch_size"] * shape["seq_len"]
  rows = {}
  for name, r in runners.items():
    t = statistics.median(r["times"])
    rows[name] = {"step_ms": 1e3 * t, "tokens_per_second": tokens / t,
                  "params_stored": r["counts"]["params_stored"], "params_active": r["counts"]["params_active"],
                  "train_flops_per_token": r["counts"]["train_flops_per_token"]}
    print(f"stem bench {name}: {1e3 * t:.1f} ms/step, {tokens / t:.0f} tokens/s", file=sys.stderr)
  base = rows["dense"]["step_ms"]
  for name in rows:
    rows[name]["vs_dense_step_time"] = rows[name]["step_ms"] / base
  rows["sparse_vs_dense_adamw_speedup"] = rows["stem_dense_adamw"]["step_ms"] / rows["stem_sparse_rows"]["step_ms"]
  rows["shape"] = dict(shape)
  rows["unique_ids_per_batch"] = float(np.mean(unique))
  return rows
