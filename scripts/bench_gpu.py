#!/usr/bin/env python3
"""The lent-GPU benchmark plan (issue 17, kernels.md 9-10): one process, one JSON line appended per row.

Sections, in this order (each must start its rows by a fraction of --budget-s; later rows are recorded as skipped):
  attention  bf16, causal, GQA 4:1, B*T = 16k tokens, H*D = 2048; D=128 first, then 64; T in 1k..16k. Per shape,
             correctness first (our kernel vs the fp32 reference and vs cuDNN, gradients vs cuDNN), then fwd and
             fwd+bwd TFLOP/s (FA convention: 4*B*H*T^2*D forward halved for causal, backward 2.5x) of ours and cuDNN;
             our retention (mul_logit) variant at 4k;
  lookup     STEM silu(gate) * table[ids] GB/s vs an elementwise copy (bytes moved / time);
  decode     the split-K decode kernel vs XLA (the engine's fp32 reference and bf16 dot_product_attention) over
             caches of 8k and 32k slots (10% evicted): tokens/s of one attention layer;
  train      a ~1B dense decoder (bench_gpu_train.py), 10 steps: step time and MFU vs the bf16 peak;
  sweep      our kernel's block sizes at T=4k, D=128 (fwd and fwd+bwd), and the default blocks with full blocks
             masked too (what the unmasked full-block loop buys), in the time left.
`--cpu-smoke` runs every section at tiny shapes on CPU (Pallas interpret mode) to check the code paths: its numbers
mean nothing. `--render FILE` prints the tables of a JSONL file (also one a cut-short run left).
"""

import argparse
import importlib.abc
import json
import os
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.85")

ABSENT_ON_DEVICE_IMAGE = ("ml_collections", "grain", "tensorboardX")  # the lent GPU host has none of these


class _Absent(importlib.abc.MetaPathFinder):
  """Makes the modules the device image lacks unimportable here too, so a smoke run proves the imports."""

  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in ABSENT_ON_DEVICE_IMAGE:
      raise ModuleNotFoundError(f"{name} is not installed on the device image (bench_gpu.py --device-image)")
    return None


# (section, fraction of --budget-s by which its rows must have started); the train rows need ~1/4 of it to finish,
# the block sweep only runs in what is left.
DEADLINES = (("attention", 0.42), ("lookup", 0.46), ("decode", 0.55), ("train", 0.62), ("sweep", 0.92))
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 FLOP/s per chip (datasheets; kernels.md 10)
SWEEP = ((128, 64, 64, 64, 64, 64), (64, 64, 64, 64, 64, 64), (128, 128, 64, 64, 64, 64), (64, 32, 32, 32, 32, 32),
         (128, 64, 128, 64, 64, 128))


def time_call(fn, *args, min_seconds):
  """(seconds per call, the first call's output): compile/warm-up outside the timed loop, then enough iterations
  to fill `min_seconds` (at least 2, at most 100)."""
  out = jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  once = time.perf_counter() - start
  iters = max(2, min(100, int(min_seconds / max(once, 1e-6))))
  start = time.perf_counter()
  for _ in range(iters):
    result = fn(*args)
  jax.block_until_ready(result)
  return (time.perf_counter() - start) / iters, out


def rel_err(x, ref):
  """max |x - ref| / max(max |ref|, 1), in fp32 (one number per comparison, as the kernel tests use)."""
  x, ref = jnp.asarray(x, jnp.float32), jnp.asarray(ref, jnp.float32)
  return float(jnp.abs(x - ref).max() / jnp.maximum(jnp.abs(ref).max(), 1.0))


def attention_inputs(T, D, smoke):
  tokens, hd = (256, 256) if smoke else (16384, 2048)
  H = hd // D
  K, B = max(1, H // 4), max(1, tokens // T)
  keys = jax.random.split(jax.random.key(T * 1000 + D), 5)
  q = jax.random.normal(keys[0], (B, T, H, D), jnp.bfloat16)
  k = jax.random.normal(keys[1], (B, T, K, D), jnp.bfloat16)
  v = jax.random.normal(keys[2], (B, T, K, D), jnp.bfloat16)
  do = jax.random.normal(keys[3], (B, T, H, D), jnp.bfloat16)
  log_beta = -jax.random.uniform(keys[4], (B, K, T), maxval=1e-3)
  return (q, k, v), do, log_beta, dict(T=T, D=D, B=B, H=H, K=K)


def attention_fns(impl, blocks, log_beta):
  """(fwd, fwd_bwd) jitted for one implementation; fwd_bwd returns (dq, dk, dv) for a fixed cotangent."""
  if impl == "cudnn":
    attend = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
  elif impl == "pallas_all_masked":  # full blocks masked too: does the unmasked full-block loop pay?
    attend = lambda q, k, v: kernels.flash_attention(q, k, v, causal=True, block_sizes=blocks, skip_full_masks=False)
  else:
    extra = dict(log_retention=log_beta, retention_mode="mul_logit") if impl == "pallas_mul_logit" else {}
    attend = lambda q, k, v: kernels.attention(q, k, v, causal=True, implementation="pallas", block_sizes=blocks,
                                               **extra)

  def fwd_bwd(q, k, v, do):
    _, vjp = jax.vjp(attend, q, k, v)
    return vjp(do)

  return jax.jit(attend), jax.jit(fwd_bwd)


def attention_rows(T, D, *, smoke, min_seconds, impls=("pallas", "cudnn"), blocks=None, section="attention"):
  """Rows for one shape. Correctness first: every implementation's output and gradients, their errors vs the
  fp32 reference (same retention term) and vs cuDNN; then the timings."""
  blocks = blocks or kernels.BlockSizes()
  (q, k, v), do, log_beta, shape = attention_inputs(T, D, smoke)
  flops_fwd = 4 * shape["B"] * shape["H"] * T * T * D / 2
  rows, fns, results = {}, {}, {}
  for impl in impls:
    rows[impl] = dict(section=section, impl=impl, **shape,
                      blocks=[blocks.q, blocks.kv, blocks.dq_q, blocks.dq_kv, blocks.dkv_q, blocks.dkv_kv])
    try:
      if impl == "cudnn" and jax.default_backend() != "gpu":
        raise RuntimeError(f"cuDNN needs a GPU (backend {jax.default_backend()})")
      fns[impl] = attention_fns(impl, blocks, log_beta)
      results[impl] = jax.block_until_ready((fns[impl][0](q, k, v), fns[impl][1](q, k, v, do)))
    except Exception as e:  # one failing implementation must not hide the rest of the table
      rows[impl]["error"] = f"{type(e).__name__}: {e}"[:200]
  if section == "attention":
    for impl, (out, grads) in results.items():
      retention = dict(log_retention=log_beta, retention_mode="mul_logit") if impl == "pallas_mul_logit" else {}
      ref = jax.jit(lambda q, k, v: kernels.attention_reference(q, k, v, causal=True, **retention))(
          *(x.astype(jnp.float32) for x in (q, k, v)))
      rows[impl]["err_vs_reference"] = rel_err(out, ref)
      if "cudnn" in results and impl == "pallas":
        rows[impl]["err_vs_cudnn"] = rel_err(out, results["cudnn"][0])
        rows[impl]["grad_err_vs_cudnn"] = max(rel_err(g, g_c) for g, g_c in zip(grads, results["cudnn"][1]))
  for impl, (fwd, fwd_bwd) in fns.items():
    if impl not in results:
      continue
    t_fwd, _ = time_call(fwd, q, k, v, min_seconds=min_seconds)
    t_all, _ = time_call(fwd_bwd, q, k, v, do, min_seconds=min_seconds)
    rows[impl].update(fwd_ms=1e3 * t_fwd, fwd_bwd_ms=1e3 * t_all, fwd_tflops=flops_fwd / t_fwd / 1e12,
                      fwd_bwd_tflops=3.5 * flops_fwd / t_all / 1e12)
  return list(rows.values())


def lookup_rows(*, smoke, min_seconds):
  V, F, N = (64, 128, 256) if smoke else (32768, 8192, 16384)
  keys = jax.random.split(jax.random.key(0), 3)
  table = jax.random.normal(keys[0], (V, F), jnp.bfloat16)
  ids = jax.random.randint(keys[1], (N,), 0, V)
  gate = jax.random.normal(keys[2], (N, F), jnp.bfloat16)
  t_copy, _ = time_call(jax.jit(lambda x: x * jnp.bfloat16(1.5)), gate, min_seconds=min_seconds)
  copy_gbps = 2 * N * F * 2 / t_copy / 1e9  # one read, one write
  rows = [dict(section="lookup", impl="copy", V=V, F=F, N=N, gbps=copy_gbps, fraction_of_copy=1.0)]
  outs = {}
  for impl in ("pallas", "xla"):
    row = dict(section="lookup", impl=impl, V=V, F=F, N=N)
    try:
      fn = jax.jit(lambda t, i, g, impl=impl: kernels.stem_lookup(t, i, g, implementation=impl))
      t, outs[impl] = time_call(fn, table, ids, gate, min_seconds=min_seconds)
      gbps = 3 * N * F * 2 / t / 1e9  # gate and rows read, output written
      row.update(gbps=gbps, fraction_of_copy=gbps / copy_gbps)
    except Exception as e:
      row["error"] = f"{type(e).__name__}: {e}"[:200]
    rows.append(row)
  if len(outs) == 2:
    rows[1]["err_vs_xla"] = rel_err(outs["pallas"], outs["xla"])
  return rows


def decode_rows(S, *, smoke, min_seconds):
  """One decode step of one attention layer (T=1) over an S-slot cache with 10% of the slots evicted."""
  B, H, K, D = (2, 8, 2, 64) if smoke else (8, 32, 8, 128)
  keys = jax.random.split(jax.random.key(S), 5)
  q = jax.random.normal(keys[0], (B, 1, H, D), jnp.bfloat16)
  k = jax.random.normal(keys[1], (B, S, K, D), jnp.bfloat16)
  v = jax.random.normal(keys[2], (B, S, K, D), jnp.bfloat16)
  keep = (jax.random.uniform(keys[3], (B, K, S)) >= 0.1).astype(jnp.int8)
  kv_pos = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, K, S))
  q_pos = jnp.full((B, 1), S, jnp.int32)
  cached = dict(q_positions=q_pos, kv_positions=kv_pos, keep=keep)
  mask = jnp.repeat(keep != 0, H // K, axis=1)[:, :, None, :]  # [B, H, 1, S]: every kept slot is in the past
  fns = {"pallas_decode": lambda q, k, v: kernels.attention(q, k, v, implementation="pallas", **cached),
         "xla_reference": lambda q, k, v: kernels.attention(q, k, v, implementation="xla", **cached),
         "xla_bf16_dpa": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")}
  rows, outs = [], {}
  for impl, fn in fns.items():
    row = dict(section="decode", impl=impl, B=B, S=S, H=H, K=K, D=D)
    try:
      t, outs[impl] = time_call(jax.jit(fn), q, k, v, min_seconds=min_seconds)
      row.update(step_us=1e6 * t, tokens_per_s=B / t, cache_gbps=2 * B * S * K * D * 2 / t / 1e9)
    except Exception as e:
      row["error"] = f"{type(e).__name__}: {e}"[:200]
    rows.append(row)
  if "xla_reference" in outs:
    for row in rows:
      if row["impl"] in outs and row["impl"] != "xla_reference":
        row["err_vs_reference"] = rel_err(outs[row["impl"]], outs["xla_reference"])
  return rows


def plan(smoke):
  """[(section, label, thunk -> rows)] in run order; D=128 rows first."""
  seqs, dims = ((64, 128), (64, 32)) if smoke else ((1024, 2048, 4096, 8192, 16384), (128, 64))
  mid, top_d = seqs[-1] if smoke else 4096, dims[0]
  steps = []
  for D in dims:
    for T in seqs:
      impls = ("pallas", "cudnn", "pallas_mul_logit") if (T, D) == (mid, top_d) else ("pallas", "cudnn")
      steps.append(("attention", f"T={T} D={D}", lambda T=T, D=D, impls=impls, **kw: attention_rows(
          T, D, impls=impls, **kw)))
  steps.append(("lookup", "V x F gather", lookup_rows))
  for S in (256, 1024) if smoke else (8192, 32768):
    steps.append(("decode", f"S={S}", lambda S=S, **kw: decode_rows(S, **kw)))
  steps.append(("train", "~1B decoder", lambda **kw: bench_gpu_train.train_rows(**kw)))
  for sizes in SWEEP[:2] if smoke else SWEEP:
    blocks = kernels.BlockSizes(*sizes)
    steps.append(("sweep", f"blocks={sizes}", lambda blocks=blocks, **kw: attention_rows(
        mid, top_d, impls=("pallas",), blocks=blocks, section="sweep", **kw)))
  steps.append(("sweep", "full blocks masked", lambda **kw: attention_rows(
      mid, top_d, impls=("pallas_all_masked",), section="sweep", **kw)))
  return steps


def append(path, row):
  print(json.dumps(row), flush=True)
  if path:
    with open(path, "a") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()
      os.fsync(f.fileno())


def fmt(x, spec=".2f"):
  return "-" if x is None else format(x, spec)


def print_table(columns, rows, labels, values):
  """A markdown table: labels(row) cells, then values(row) cells, or the row's error in their place."""
  print("\n| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
  for r in rows:
    cells = labels(r) + ([r["error"]] + [""] * (len(columns) - len(labels(r)) - 1) if "error" in r else values(r))
    print("| " + " | ".join(map(str, cells)) + " |")


def render(rows):
  """Markdown tables of the rows (ratios to cuDNN / copy / XLA are computed here, from rows of the same run)."""
  head = next((r for r in rows if r.get("section") == "header"), {})
  print(f"\njax {head.get('jax', '?')} on {head.get('device', '?')}")
  by = lambda section: [r for r in rows if r.get("section") == section and not r.get("skipped")]
  cudnn = {(r["T"], r["D"]): r for r in by("attention") if r["impl"] == "cudnn" and "error" not in r}

  def attention_values(r):
    c = cudnn.get((r["T"], r["D"]))
    ratio = lambda key: fmt(r[key] / c[key]) if c else "-"
    return [fmt(r["fwd_tflops"], ".1f"), fmt(r["fwd_bwd_tflops"], ".1f"), ratio("fwd_tflops"),
            ratio("fwd_bwd_tflops"), *(fmt(r.get(key), ".1e") for key in ("err_vs_reference", "err_vs_cudnn",
                                                                         "grad_err_vs_cudnn"))]

  print_table(("D", "T", "impl", "fwd TFLOP/s", "fwd+bwd TFLOP/s", "fwd / cuDNN", "fwd+bwd / cuDNN", "err vs ref",
               "err vs cuDNN", "grad err vs cuDNN"), by("attention"), lambda r: [r["D"], r["T"], r["impl"]],
              attention_values)
  print_table(("impl", "blocks (q, kv, dq_q, dq_kv, dkv_q, dkv_kv)", "fwd TFLOP/s", "fwd+bwd TFLOP/s"),
              by("sweep"), lambda r: [r["impl"], tuple(r.get("blocks", ()))],
              lambda r: [fmt(r["fwd_tflops"], ".1f"), fmt(r["fwd_bwd_tflops"], ".1f")])
  print_table(("lookup", "GB/s", "fraction of copy", "err vs xla"), by("lookup"), lambda r: [r["impl"]],
              lambda r: [fmt(r["gbps"], ".0f"), fmt(r["fraction_of_copy"]), fmt(r.get("err_vs_xla"), ".1e")])
  print_table(("decode S", "impl", "step us", "tokens/s", "cache GB/s", "err vs reference"), by("decode"),
              lambda r: [r["S"], r["impl"]],
              lambda r: [fmt(r["step_us"], ".0f"), fmt(r["tokens_per_s"], ".0f"), fmt(r["cache_gbps"], ".0f"),
                         fmt(r.get("err_vs_reference"), ".1e")])
  print_table(("train", "attention", "params", "tokens/step", "step ms", "TFLOP/s", "MFU", "loss first -> last"),
              by("train"), lambda r: [r.get("name"), r.get("attention")],
              lambda r: [f"{r['params'] / 1e9:.2f}B", r["tokens_per_step"], fmt(r["step_ms"], ".1f"),
                         fmt(r["tflops"], ".1f"), fmt(r.get("mfu"), ".1%"),
                         f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}"])
  skipped = [r for r in rows if r.get("skipped")]
  if skipped:
    print(f"\nskipped (time budget): {', '.join(r['section'] + ' ' + r['label'] for r in skipped)}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU (interpret mode): checks the code")
  parser.add_argument("--jsonl", help="append one JSON line per row here (flushed after every row)")
  parser.add_argument("--render", metavar="FILE", help="only print the tables of an existing JSONL file")
  parser.add_argument("--device-image", action="store_true",
                      help=f"refuse to import {', '.join(ABSENT_ON_DEVICE_IMAGE)} (absent on the GPU host)")
  parser.add_argument("--min-seconds", type=float, default=0.25, help="timed seconds per measurement")
  parser.add_argument("--budget-s", type=float, default=300.0,
                      help="seconds this run may take; sections start only before their share of it has passed")
  args = parser.parse_args()
  if args.render:
    with open(args.render) as f:
      render([json.loads(line) for line in f if line.strip()])
    return 0
  if args.device_image:
    sys.meta_path.insert(0, _Absent())
  global jax, jnp, kernels, bench_gpu_train
  import jax
  import jax.numpy as jnp
  from tessera.models import kernels
  import bench_gpu_train
  backend = jax.default_backend()
  if backend != "gpu" and not args.cpu_smoke:
    print(f"bench_gpu.py: needs a GPU backend (found {backend!r}); use --cpu-smoke to check the code on CPU",
          file=sys.stderr)
    return 2
  if args.cpu_smoke:
    jax.config.update("jax_disable_most_optimizations", True)  # interpret-mode compiles dominate; speed is moot
  min_seconds = 0.0 if args.cpu_smoke else args.min_seconds
  device = jax.devices()[0].device_kind
  import jaxlib
  header = dict(section="header", jax=jax.__version__, jaxlib=jaxlib.__version__, device=device, backend=backend,
                devices=jax.device_count(), smoke=args.cpu_smoke)
  print(f"jax {jax.__version__} on {device} ({backend})", flush=True)
  rows = [header]
  append(args.jsonl, header)
  peak = next((p for name, p in PEAK_BF16.items() if name in device), None)
  deadlines = dict(DEADLINES)
  start = time.perf_counter()
  for section, label, thunk in plan(args.cpu_smoke):
    elapsed = time.perf_counter() - start
    if not args.cpu_smoke and elapsed > deadlines[section] * args.budget_s:
      new = [dict(section=section, label=label, skipped=True, elapsed_s=elapsed)]
    else:
      kw = dict(smoke=args.cpu_smoke, min_seconds=min_seconds)
      if section == "train":
        kw.update(peak_flops=peak, seconds_left=args.budget_s - elapsed)
      try:
        new = thunk(**kw)
      except Exception as e:  # a section that fails outright still leaves its row
        new = [dict(section=section, label=label, error=f"{type(e).__name__}: {e}"[:200])]
    for row in new:
      row.setdefault("label", label)
      rows.append(row)
      append(args.jsonl, row)
  render(rows)
  return 0


if __name__ == "__main__":
  sys.exit(main())
