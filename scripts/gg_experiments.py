"""GG-prior experiments at CPU scale for docs/results/gg_prior.md, all through the real CLIs.

(1) GG init (ν = 0.5, 1, 2) vs the default normal init, eval-loss curves at equal tokens; (2) relative RMSE and
eval-loss increase of RF8 / E4M3 / E5M2 on trained weights; (3) BackSlash λ sweep and DeepShape (+ recovery
fine-tune): entropy bits/param vs eval-loss change. Finished runs are reused, so a rerun only plots.
Writes <out>/gg_prior_*.png and <out>/gg_prior_data.json; prints every command it ran.
"""
import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
INITS = {"normal": [], "gg_nu2": ["--config.model.init=gg", "--config.model.gg.shape=2.0"],
         "gg_nu1": ["--config.model.init=gg", "--config.model.gg.shape=1.0"],
         "gg_nu0.5": ["--config.model.init=gg", "--config.model.gg.shape=0.5"]}
LAM_MULTIPLES = (1, 16, 64)
FORMATS = ("rf8", "e4m3", "e5m2")
TINY_PARAMS = 147776
DEFAULT_LAM = 2e3 * TINY_PARAMS / 1.24e8


def run(args, log):
  log.append(" ".join(args))
  print("+", log[-1], flush=True)
  module_or_script = [] if args[0].endswith(".py") else ["-m"]
  subprocess.run([sys.executable, *module_or_script, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def train(workdir, overrides, a, log):
  if not (workdir / "summary.json").exists():
    run(["tessera.trainer", "--config", "configs/lm.py:tiny", "--workdir", str(workdir),
         f"--config.train.steps={a.steps}", f"--config.eval.every_steps={a.steps // 10}",
         "--config.checkpoint.every_steps=0", "--config.regularizer.weight_stats=True",
         "--config.sample.max_new_tokens=1", *overrides], log)
  return json.loads((workdir / "summary.json").read_text())


def transform(command, source, out, extra, log):
  if not (out / "summary.json").exists():
    run(["scripts/transform_run.py", command, "--workdir", str(source), "--out", str(out), *extra], log)
  return json.loads((out / "summary.json").read_text())


def eval_curve(workdir):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(workdir / "tb"), {event_accumulator.SCALARS: 0})
  acc.Reload()
  points = {e.step: e.value for e in acc.Scalars("eval/loss")}
  return sorted(points.items())


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--runs", default="runs/gg_experiments",
                 help="workdirs of the runs, one per variant and seed (default: %(default)s)")
  p.add_argument("--out", default="docs/results", help="where the results page and plots go (default: %(default)s)")
  p.add_argument("--steps", type=int, default=150, help="train steps per run (default: %(default)s)")
  p.add_argument("--seeds", type=int, default=2, help="seeds per variant (default: %(default)s)")
  a = p.parse_args()
  runs, out = ROOT / a.runs, ROOT / a.out
  out.mkdir(parents=True, exist_ok=True)
  log, data = [], {"steps": a.steps, "tokens_per_step": 8 * 64}

  # (1) initialisation
  curves = {}
  for name, overrides in INITS.items():
    for seed in range(a.seeds):
      train(runs / f"{name}_s{seed}", [*overrides, f"--config.seed={seed}"], a, log)
      curves.setdefault(name, []).append(eval_curve(runs / f"{name}_s{seed}"))
  data["init"] = {name: {"steps": [s for s, _ in c[0]], "eval_loss": [[v for _, v in run_curve] for run_curve in c]}
                  for name, c in curves.items()}

  # (3) BackSlash λ sweep (λ = 0 is the normal-init seed-0 run) and DeepShape on that baseline
  baseline = runs / "normal_s0"
  base_summary = json.loads((baseline / "summary.json").read_text())
  rate = [{"label": "baseline (λ=0)", **{k: base_summary[k] for k in ("eval_loss", "entropy_bits",
                                                                         "expgolomb_bits", "nu_hat", "sparsity")}}]
  for multiple in LAM_MULTIPLES:
    s = train(runs / f"backslash_x{multiple}", ["--config.regularizer.backslash.enabled=True",
                                                f"--config.regularizer.backslash.lam={DEFAULT_LAM * multiple}"], a, log)
    rate.append({"label": f"BackSlash λ={multiple}×", **{k: s[k] for k in rate[0] if k != "label"}})
  ds = transform("deepshape", baseline, runs / "normal_s0_ds", [], log)
  rate.append({"label": "DeepShape (no fine-tune)", "eval_loss": ds["eval_loss"],
               **{k: ds["after"][k] for k in ("entropy_bits", "expgolomb_bits", "nu_hat", "sparsity")}})
  ft_dir = runs / "normal_s0_ds_ft"
  if not (ft_dir / "summary.json").exists():
    run(["tessera.trainer", "--config", "configs/lm.py:tiny", "--workdir", str(ft_dir), "--init-from",
         str(runs / "normal_s0_ds"), f"--config.train.steps={a.steps // 10}", "--config.eval.every_steps=0",
         "--config.checkpoint.every_steps=0", "--config.regularizer.weight_stats=True",
         "--config.sample.max_new_tokens=1"], log)
  s = json.loads((ft_dir / "summary.json").read_text())
  rate.append({"label": f"DeepShape + {a.steps // 10}-step fine-tune",
               **{k: s[k] for k in ("eval_loss", "entropy_bits", "expgolomb_bits", "nu_hat", "sparsity")}})
  for row in rate:
    row["eval_loss_change"] = row["eval_loss"] - base_summary["eval_loss"]
  data["rate"] = rate
  data["deepshape"] = {k: ds[k] for k in ("deepshape", "source_eval_loss", "eval_loss")}
  data["deepshape"].update({f"{stage}_{k}": ds[stage][k] for stage in ("before", "after")
                            for k in ("nu_hat", "beta_hat", "entropy_bits", "expgolomb_bits")})

  # (2) 8-bit formats on trained weights: normal init, GG ν=1 init, BackSlash 64×
  quant = []
  for model in ("normal_s0", "gg_nu1_s0", f"backslash_x{LAM_MULTIPLES[-1]}"):
    for fmt in FORMATS:
      q = transform("quantize", runs / model, runs / f"{model}_{fmt}", ["--format", fmt], log)
      quant.append({"model": model, "format": fmt, **{k: q[k] for k in (
          "relative_rmse", "source_eval_loss", "eval_loss", "eval_loss_change", "size_ratio")}})
  data["quantize"] = quant
  data["commands"] = log
  (out / "gg_prior_data.json").write_text(json.dumps(data, indent=2) + "\n")
  plot(data, out)


def plot(data, out):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for name, c in data["init"].items():
    tokens = np.array(c["steps"]) * data["tokens_per_step"]
    losses = np.array(c["eval_loss"])
    ax.plot(tokens, losses.mean(0), label=f"{name} ({len(losses)} seeds)")
    ax.fill_between(tokens, losses.min(0), losses.max(0), alpha=0.2)
  ax.set(xlabel="training tokens", ylabel="eval loss (nats/token)", title="GG init vs normal init (tiny decoder)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / "gg_prior_init.png", dpi=120)

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  models = list(dict.fromkeys(q["model"] for q in data["quantize"]))
  width = 0.25
  for i, fmt in enumerate(FORMATS):
    rows = [next(q for q in data["quantize"] if q["model"] == m and q["format"] == fmt) for m in models]
    x = np.arange(len(models)) + (i - 1) * width
    ax1.bar(x, [r["relative_rmse"] for r in rows], width, label=fmt)
    ax2.bar(x, [r["eval_loss_change"] for r in rows], width, label=fmt)
  for ax, label in ((ax1, "relative RMSE of weights"), (ax2, "eval-loss increase (nats)")):
    ax.set_xticks(np.arange(len(models)), models, fontsize=8)
    ax.set_ylabel(label)
    ax.legend()
  fig.suptitle("8-bit weight formats on trained tiny decoders")
  fig.tight_layout()
  fig.savefig(out / "gg_prior_quantize.png", dpi=120)

  fig, ax = plt.subplots(figsize=(6, 4))
  for row in data["rate"]:
    ax.scatter(row["entropy_bits"], row["eval_loss_change"], label=row["label"])
  ax.set(xlabel="entropy of 2^-13-quantised weights (bits/param)", ylabel="eval-loss change vs baseline (nats)",
         title="Rate vs distortion: BackSlash and DeepShape")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "gg_prior_rate.png", dpi=120)


if __name__ == "__main__":
  main()
