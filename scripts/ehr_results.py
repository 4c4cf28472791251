"""Main table + plots for EHR world-model runs (jepa_ehr.md "Results to report") from finished, probed workdirs.

  python scripts/ehr_results.py runs/ehr_study/* --out docs/results --name jepa_ehr_tiny

Reads each run's probe/probe.json (written by the end-of-run probe or scripts/probe) and metrics.jsonl; groups runs
by objective (sft_only, sft+jepa_joint, sft+jepa_curriculum); writes <out>/<name>.json (every number), <name>.png
(AUROC vs decision node per objective and task; the collapse monitor; SFT loss curves) and prints a markdown table:
AUROC mean ± std over seeds per task x node x objective, the last-LAB//A-value baseline row, and per objective the
mean long_term_slope / short_term AUROC over nodes with the gaps the spec's check 8 asks about.
"""
import argparse
import json
import pathlib
from collections import defaultdict

import numpy as np

ORDER = ("sft_only", "sft+jepa_joint", "sft+jepa_curriculum")


def load(workdir):
  report = json.loads((workdir / "probe" / "probe.json").read_text())
  config = json.loads((workdir / "config.json").read_text())
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
  return report, config, metrics


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", type=pathlib.Path, help="probed EHR run directories")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/results"),
                      help="where the table and plots go (default: %(default)s)")
  parser.add_argument("--name", default="jepa_ehr", help="file name stem of the outputs (default: %(default)s)")
  args = parser.parse_args(argv)
  auroc = defaultdict(list)  # (objective, encoder, task, node) -> [per seed]
  curves = defaultdict(list)  # objective -> [(steps, sft_loss, z_hat_std)]
  seconds = 0.0
  for workdir in args.runs:
    if not (workdir / "probe" / "probe.json").is_file():
      print(f"skipping {workdir}: no probe/probe.json")
      continue
    report, config, metrics = load(workdir)
    objective = report["objective"]
    for r in report["results"]:
      encoder = r["encoder"]
      owner = objective if encoder != "last_value" else "last_value"
      auroc[(owner, encoder, r["task"], r["node"])].append(r["auroc"])
    train = [m for m in metrics if "train/sft_loss" in m]
    curves[objective].append(([m["step"] for m in train], [m["train/sft_loss"] for m in train],
                              [m["train/z_hat_std_mean"] for m in train]))
    seconds += sum(m.get("train/step_time", 0.0) for m in train)
  objectives = [o for o in ORDER if any(k[0] == o for k in auroc)]
  tasks = sorted({k[2] for k in auroc})
  nodes = sorted({k[3] for k in auroc})
  lines = ["| task | node | " + " | ".join(objectives) + " | last LAB//A value |",
           "|---|---|" + "---|" * (len(objectives) + 1)]
  for task in tasks:
    for node in nodes:
      cells = []
      for objective in objectives + ["last_value"]:
        values = auroc.get((objective, "online" if objective != "last_value" else "last_value", task, node), [])
        cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f} ({len(values)})" if values else "–")
      if any(c != "–" for c in cells):
        lines.append(f"| {task} | {node} | " + " | ".join(cells) + " |")
  summary = {}
  for objective in objectives + ["last_value"]:
    encoder = "online" if objective != "last_value" else "last_value"
    for task in ("long_term_slope", "short_term"):
      values = [v for (o, e, t, _), vs in auroc.items() if o == objective and e == encoder and t == task for v in vs]
      summary[f"{objective}/{task}"] = float(np.mean(values)) if values else None
  lines.append("")
  lines.append("Mean AUROC over seeds and nodes: " + "; ".join(
      f"{k} {v:.3f}" for k, v in summary.items() if v is not None))
  base = summary.get("sft_only/long_term_slope")
  for objective in objectives[1:]:
    slope, short = summary.get(f"{objective}/long_term_slope"), summary.get(f"{objective}/short_term")
    if base is not None and slope is not None:
      lines.append(f"{objective} - sft_only: long_term_slope {slope - base:+.3f} (check 8 asks >= +0.03), "
                   f"short_term {short - summary['sft_only/short_term']:+.3f} (asks >= -0.01)")
  lines.append(f"Training CPU wall time of these runs: {seconds / 60:.1f} min (sum of step times).")
  print("\n".join(lines))
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / f"{args.name}.json").write_text(json.dumps(
      {"auroc": {"/".join(k): v for k, v in auroc.items()}, "summary": summary, "train_minutes": seconds / 60},
      indent=2) + "\n")
  plot(auroc, curves, objectives, tasks, nodes, args.out / f"{args.name}.png")


def plot(auroc, curves, objectives, tasks, nodes, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(tasks) + 2, figsize=(4 * (len(tasks) + 2), 3.4), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    for objective in objectives + ["last_value"]:
      encoder = "online" if objective != "last_value" else "last_value"
      xs = [n for n in nodes if auroc.get((objective, encoder, task, n))]
      if xs:
        values = [auroc[(objective, encoder, task, n)] for n in xs]
        ax.errorbar(xs, [np.mean(v) for v in values], yerr=[np.std(v) for v in values], marker="o", capsize=3,
                    label=objective if objective != "last_value" else "last LAB//A value")
    ax.set(title=task, xlabel="decision node", ylabel="AUROC (mean ± std over seeds)")
  axes[0][0].legend(fontsize=7)
  for objective in objectives:
    for i, (steps, sft, std) in enumerate(curves[objective]):
      color = f"C{objectives.index(objective)}"
      axes[0][-2].plot(steps, sft, color=color, lw=0.7, label=objective if i == 0 else None)
      axes[0][-1].plot(steps, std, color=color, lw=0.7, label=objective if i == 0 else None)
  axes[0][-2].set(title="SFT loss", xlabel="step")
  axes[0][-1].set(title="collapse monitor: mean per-dim std of ẑ", xlabel="step", yscale="log")
  axes[0][-1].axhline(0.05, color="grey", lw=0.5)
  axes[0][-2].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


if __name__ == "__main__":
  main()
