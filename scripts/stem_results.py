"""Table + plot for docs/results/stem.md from finished STEM comparison runs (same data order, seed and tokens).

  python scripts/stem_results.py runs/stem_compare/small_dense runs/stem_compare/small [...] --out docs/results

Reads each run's config.json and TensorBoard scalars; writes <out>/stem_loss.png (eval loss vs tokens and vs
training FLOPs) and prints a markdown table, per-group gradient norms, the largest post-warmup loss jump and the
fraction of STEM table rows a training batch touches (from the run's own data pipeline).
"""
import argparse
import json
import pathlib

import numpy as np

from tessera.configs import defaults  # noqa: F401  (tessera importable)
from tessera.models import registry
from tessera.trainer import config_loader, loop


def scalars(workdir, tag):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(pathlib.Path(workdir) / "tb"),
                                           size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  if tag not in acc.Tags()["scalars"]:
    return {}
  return {e.step: e.value for e in acc.Scalars(tag)}


def rows_touched(config, batches=20):
  """Mean fraction of table rows (of V) whose id occurs in a training batch."""
  pipeline = loop.build_pipeline(config)
  it = pipeline.train_batches(0, slice(None))
  fractions = [len(np.unique(next(it)["inputs"])) / config.model.vocab_size for _ in range(batches)]
  return float(np.mean(fractions))


def summarize(workdir):
  config = config_loader.from_json(pathlib.Path(workdir) / "config.json")
  counts = registry.ACCOUNTING["stem"](config.model, config.train.seq_len)
  tokens_per_step = config.train.batch_size * config.train.seq_len
  evals = scalars(workdir, "eval/loss")
  train = scalars(workdir, "train/loss")
  tps = scalars(workdir, "train/tokens_per_second")
  after_warmup = [s for s in sorted(train) if s > config.optim.warmup_steps]
  jumps = [train[b] - train[a] for a, b in zip(after_warmup, after_warmup[1:])]
  norms = {tag: scalars(workdir, f"train/grad_norm/{tag}") for tag in ("default", "group0")}
  return {
      "name": pathlib.Path(workdir).name, "layers": list(config.model.stem.layers or []),
      "table_init": config.model.stem.table_init, "counts": counts, "tokens_per_step": tokens_per_step,
      "eval": {s * tokens_per_step: v for s, v in sorted(evals.items())},
      "final_eval": evals[max(evals)], "final_tokens": max(evals) * tokens_per_step,
      "tokens_per_second": float(np.median([v for s, v in tps.items() if s > 5])),
      "max_loss_jump_after_warmup": max(jumps) if jumps else float("nan"),
      "grad_norms": {k: {s: v[s] for s in sorted(v)[::max(len(v) // 6, 1)]} for k, v in norms.items() if v},
      "rows_touched": rows_touched(config) if config.model.stem.layers else None,
  }


def plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for r in results:
    tokens = np.array(list(r["eval"]))
    loss = np.array(list(r["eval"].values()))
    label = f"{r['name']} (STEM layers {r['layers'] or 'none'})"
    axes[0].plot(tokens / 1e6, loss, marker="o", label=label)
    axes[1].plot(tokens * r["counts"]["train_flops_per_token"] / 1e12, loss, marker="o", label=label)
  axes[0].set_xlabel("training tokens (M)")
  axes[1].set_xlabel("training FLOPs (TFLOP, 6 x active matmul params + attention)")
  for ax in axes:
    ax.set_ylabel("eval loss (nats/byte)")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("workdirs", nargs="+", help="finished STEM/baseline run directories")
  p.add_argument("--out", default="docs/results", help="where the table and plots go (default: %(default)s)")
  args = p.parse_args()
  results = [summarize(w) for w in args.workdirs]
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  plot(results, out / "stem_loss.png")
  print("| model | STEM layers | stored params | active params | FLOPs/token (paper, 2 x active) | "
        "train FLOPs/token (MFU) | eval loss @ tokens | tokens/s (CPU) | max loss jump after warmup | "
        "table rows touched/step |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    c = r["counts"]
    touched = f"{r['rows_touched']:.1%}" if r["rows_touched"] is not None else "-"
    print(f"| {r['name']} | {r['layers'] or '[]'} | {c['params_stored']:,} | {c['params_active']:,} | "
          f"{c['flops_per_token_paper']:,.0f} | {c['train_flops_per_token']:,.0f} | "
          f"{r['final_eval']:.4f} @ {r['final_tokens'] / 1e6:.2f}M | {r['tokens_per_second']:,.0f} | "
          f"{r['max_loss_jump_after_warmup']:+.3f} | {touched} |")
  print()
  print(json.dumps({r["name"]: {"eval_by_tokens": r["eval"], "grad_norms_by_step": r["grad_norms"]}
                    for r in results}, indent=1))


if __name__ == "__main__":
  main()
