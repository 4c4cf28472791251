"""The EHR world-model results page (jepa_ehr.md "Results to report") from committed JSON: tables, check 8, plots.

  python scripts/ehr_results.py --data docs/results/jepa_ehr_data.json --out docs/results --name jepa_ehr
  python scripts/ehr_results.py runs/x/* --data /tmp/d.json --out /tmp --name x   # collect probed workdirs first

The data JSON (written unit by unit by scripts/ehr_study.py, or here from workdirs) holds per unit its group
(main / mimic / ablation), seed, objective, the probe rows of probe/probe.json, training curves from metrics.jsonl
and CPU seconds. Writes <out>/<name>.md: the main synthetic table (AUROC mean ± sample std over seeds per task x node
x objective, plus the last-LAB//A-value probe), spec check 8 with its verdict, the ablations that ran and those that
did not, the MIMIC-IV demo table (labelled noisy) and the study's CPU time; <out>/<name>.png: AUROC vs decision node
per objective, SFT loss curves, the collapse monitor.
"""
import argparse
import json
import pathlib
from collections import defaultdict

import numpy as np

DATA_FILE = "jepa_ehr_data.json"
ORDER = ("sft_only", "sft+jepa_joint", "sft+jepa_curriculum")
NODES = ("0.5y", "1.0y", "1.5y")
SYNTH_TASKS = ("short_term", "long_term_slope", "death_1y")
MARGIN_SLOPE, MARGIN_SHORT = 0.03, -0.01  # spec check 8


def cpu_name():
  from tessera.trainer import cpu_peak
  return cpu_peak.cpu_model()


def unit_record(workdir):
  """What the page needs of one probed run: objective, probe rows, curves (every logged train step)."""
  workdir = pathlib.Path(workdir)
  report = json.loads((workdir / "probe" / "probe.json").read_text())
  config = json.loads((workdir / "config.json").read_text())
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
  train = [m for m in metrics if "train/sft_loss" in m]
  stats = pathlib.Path(config.get("data", {}).get("path") or workdir / "data" / "prepared") / "stats.json"
  tokenizer = json.loads(stats.read_text()).get("tokenizer", "codes") if stats.is_file() else "codes"
  keep = ("task", "node", "encoder", "auroc", "auroc_lo", "auroc_hi", "auprc", "n", "positives", "protocol")
  return {"objective": report["objective"], "tokenizer": tokenizer, "seed": config["seed"], "steps": report["step"],
          "results": [{k: r[k] for k in keep} for r in report["results"]],
          "curves": {"step": [m["step"] for m in train],
                     **{key: [round(m.get(f"train/{key}", float("nan")), 5) for m in train]
                        for key in ("sft_loss", "z_hat_std_mean", "z_hat_std_min")}}}


def mean_std(values):
  """(mean, sample std with ddof=1 or nan for one value, n)."""
  values = np.asarray(values, float)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan"), len(values)


def pm(m, s, n, sign=""):
  """mean ± sample std (n), the std left out for one value."""
  return f"{m:{sign}.3f} ± {s:.3f} ({n})" if n > 1 else f"{m:{sign}.3f} (1)"


def fmt(values):
  return pm(*mean_std(values)) if len(values) else "–"


def auroc_of(unit, task, node=None, encoder="online"):
  """One AUROC, or the mean over nodes when node is None; None when the unit lacks it."""
  values = [r["auroc"] for r in unit["results"] if r["task"] == task and r["encoder"] == encoder
            and (node is None or r["node"] == node)]
  return (float(np.mean(values)) if node is None else values[0]) if values else None


def by_objective(units):
  groups = defaultdict(list)
  for name in sorted(units):
    groups[units[name]["objective"]].append(units[name])
  return groups


def main_section(units):
  groups = by_objective(units)
  objectives = [o for o in ORDER if o in groups]
  last_value = [u for u in units.values()]
  lines = ["| task | node | " + " | ".join(objectives) + " | last LAB//A value |", "|---|---|" +
           "---|" * (len(objectives) + 1)]
  for task in SYNTH_TASKS:
    for node in NODES:
      cells = [fmt([v for u in groups[o] if (v := auroc_of(u, task, node)) is not None]) for o in objectives]
      cells.append(fmt([v for u in last_value[:1] if (v := auroc_of(u, task, node, "last_value")) is not None]))
      lines.append(f"| {task} | {node} | " + " | ".join(cells) + " |")
  other = sorted({(r["task"], r["node"], r["protocol"]) for u in units.values() for r in u["results"]
                  if r["protocol"] != "train/tuning/held_out"})
  if other:
    lines += ["", "Cells probed by another protocol (a split held fewer than 2 of a class): " + "; ".join(
        f"{t} {n}: {p}, all subjects" for t, n, p in other) + "."]
  return objectives, lines


def check8(units):
  """Spec check 8 on the means over seeds and nodes, with per-seed paired gaps (seeds share data and batches)."""
  groups = by_objective(units)
  if "sft_only" not in groups or "sft+jepa_joint" not in groups:
    return ["Check 8 needs SFT-only and joint runs; not run yet."]
  lines, means = [], {}
  for objective in ORDER:
    for task in ("long_term_slope", "short_term"):
      values = [v for u in groups.get(objective, []) if (v := auroc_of(u, task)) is not None]
      if values:
        means[(objective, task)] = mean_std(values)
  any_unit = next(iter(units.values()))
  base_slope = auroc_of(any_unit, "long_term_slope", encoder="last_value")
  lines.append("Mean AUROC over nodes (mean ± std over seeds, number of seeds): " + "; ".join(
      f"{o} {t} {pm(*v)}" for (o, t), v in means.items()) +
      (f"; last LAB//A value long_term_slope {base_slope:.3f}" if base_slope is not None else "") + ".")
  for objective in ORDER[1:]:
    if (objective, "long_term_slope") not in means:
      continue
    gaps = {}
    for task in ("long_term_slope", "short_term"):
      seeds = {u["seed"]: auroc_of(u, task) for u in groups["sft_only"]}
      gaps[task] = [auroc_of(u, task) - seeds[u["seed"]] for u in groups[objective] if u["seed"] in seeds]
    slope, short = (mean_std(gaps[t]) for t in ("long_term_slope", "short_term"))
    above = means[(objective, "long_term_slope")][0] > base_slope and \
        means[("sft_only", "long_term_slope")][0] > base_slope if base_slope is not None else False
    holds = slope[0] >= MARGIN_SLOPE and short[0] >= MARGIN_SHORT and above
    lines.append(f"- **{objective} − sft_only** (paired by seed): long_term_slope {pm(*slope, sign='+')} "
                 f"(asks ≥ +0.03), short_term {pm(*short, sign='+')} (asks ≥ −0.01), both above the last-value probe on the slope task: {'yes' if above else 'no'} → "
                 + ("**the claim holds here**" if holds else "**the claim is not reproduced here**") +
                 ("" if slope[2] >= 3 or objective != "sft+jepa_joint" else " (fewer than 3 seeds so far)"))
  return lines


def ablation_section(data):
  units, plan = data["units"], data.get("plan", [])
  reference = units.get("joint_s0")
  lines = ["| run (seed 0) | long_term_slope | Δ vs joint | short_term | Δ vs joint | death_1y |",
           "|---|---|---|---|---|---|"]
  rows = [("joint_s0", "SFT+JEPA joint (reference)")] + [(p["unit"], p["description"]) for p in plan
                                                         if p["group"] == "ablation" or p["unit"] == "curriculum_s0"]
  for name, description in rows:
    unit = units.get(name)
    if unit is None:
      continue
    cells = []
    for task in ("long_term_slope", "short_term"):
      value = auroc_of(unit, task)
      ref = auroc_of(reference, task) if reference else None
      cells += [f"{value:.3f}", f"{value - ref:+.3f}" if ref is not None and name != "joint_s0" else "–"]
    death = auroc_of(unit, "death_1y")
    lines.append(f"| {description} | " + " | ".join(cells) + (f" | {death:.3f} |" if death is not None else " | – |"))
  missing = [p for p in plan if p["unit"] not in units]
  not_run = [f"- `{p['unit']}` ({p['description']}, {p['group']}): not run yet — the study's CPU time ran out before "
             "it (`scripts/ehr_study.py --commit` resumes here)" for p in missing]
  return lines, not_run


def mimic_section(units):
  """One column per (objective, tokenizer): `codes` (§4.2, units recorded before the field existed) or `text`."""
  rows = defaultdict(dict)
  for unit in units.values():
    for r in unit["results"]:
      if r["encoder"] == "online":
        rows[r["task"]][(unit["objective"], unit.get("tokenizer", "codes"))] = r
  objectives = [(o, t) for t in ("codes", "text") for o in ORDER if any((o, t) in v for v in rows.values())]
  lines = ["| task (node) | " + " | ".join(f"{o}, `{t}`: AUROC [95% CI]" for o, t in objectives) +
           " | n (positives) |", "|---|" + "---|" * (len(objectives) + 1)]
  for task in sorted(rows):
    any_row = next(iter(rows[task].values()))
    cells = [f"{rows[task][o]['auroc']:.3f} [{rows[task][o]['auroc_lo']:.2f}, {rows[task][o]['auroc_hi']:.2f}]"
             if o in rows[task] else "–" for o in objectives]
    sizes = {t: f"{r['n']} ({r['positives']})" for (_, t), r in sorted(rows[task].items(), key=lambda kv: kv[0][1])}
    size = next(iter(sizes.values())) if len(set(sizes.values())) == 1 else "; ".join(
        f"`{t}` {v}" for t, v in sizes.items())  # a tokenizer's node windows can drop different rows
    lines.append(f"| {task} ({any_row['node']}) | " + " | ".join(cells) + f" | {size} |")
  return lines


def render(data, out, name):
  """Writes <out>/<name>.md and .png from the data dict; returns the markdown."""
  units = data["units"]
  main = {k: u for k, u in units.items() if u["group"] == "main"}
  mimic = {k: u for k, u in units.items() if u["group"] == "mimic"}
  setup = data.get("setup", {})
  cpu_min = sum(u.get("cpu_s", 0.0) for u in units.values()) / 60
  md = ["# EHR world models: SFT + JEPA vs SFT-only (issue 14, jepa_ehr.md)", "",
        f"Produced by `scripts/ehr_results.py` from `{DATA_FILE}` (written unit by unit by `scripts/ehr_study.py`). "
        f"CPU: {setup.get('cpu', '?')}, {setup.get('threads', '?')}; {len(units)} finished units took "
        f"{cpu_min:.1f} CPU-min" + (" (units marked resumed lost the CPU of an attempt an abrupt stop cut short)"
                                   if any(u.get("resumed") for u in units.values()) else "") + ".", "",
        f"Synthetic set (§6): {setup.get('synthetic_subjects', '?')} subjects, probes fit on train nodes, C on "
        "tuning, tested on the 400 held-out subjects; model `small` (4 layers, d = 128), context/future 192/64, "
        f"batch 16, {setup.get('steps', '?')} steps, EMA 0.996 → 1, λ = 1. Seeds set init and batch order; the "
        "data set is one (seed 0).", ""]
  if main:
    objectives, table = main_section(main)
    md += ["## Main table (synthetic): AUROC, mean ± sample std (ddof = 1) over seeds (number of seeds)", "",
           *table, "", "## Spec check 8", "", *check8(main), ""]
  ablations, not_run = ablation_section(data)
  if len(ablations) > 3:
    md += ["## Ablations (1 seed each; mean AUROC over the three nodes)", "",
           "One seed against the joint run of the same seed: a Δ inside the main table's seed std is noise.", "",
           *ablations, ""]
  if not_run:
    md += ["## Not run", "", *not_run, ""]
  if mimic:
    md += ["## MIMIC-IV demo (noisy: 100 subjects)", "",
           "`tiny`, 200 steps on the 80 train subjects, Δ = 30 d, 1 seed; probes: stratified subject-grouped 5-fold "
           "CV over all 100 subjects, AUROC on the pooled out-of-fold predictions with a 95% subject bootstrap CI. "
           "Tokenizer `codes` = event tokens (§4.2); `text` = smb-utils-style text per calendar day through a "
           "byte-level BPE of 8192 ids trained on the train split (§4.3; about 2.3x the tokens, so the same 192-token "
           "context holds less history, and a day enters a node's context only once all of its events precede the "
           "node). With this few subjects the numbers prove the pipeline, not quality.", "", *mimic_section(mimic), ""]
  md += ["## Plots", "", f"![AUROC vs decision node, SFT loss, collapse monitor]({name}.png)", ""]
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{name}.md").write_text("\n".join(md))
  if main:
    plot(main, out / f"{name}.png")
  return "\n".join(md)


def plot(units, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  groups = by_objective(units)
  objectives = [o for o in ORDER if o in groups]
  fig, axes = plt.subplots(1, len(SYNTH_TASKS) + 2, figsize=(4 * (len(SYNTH_TASKS) + 2), 3.4), squeeze=False)
  for ax, task in zip(axes[0], SYNTH_TASKS):
    for objective in objectives + ["last_value"]:
      members, encoder = (groups[objective], "online") if objective != "last_value" else (
          list(units.values())[:1], "last_value")
      values = [[v for u in members if (v := auroc_of(u, task, n, encoder)) is not None] for n in NODES]
      if not all(values):
        continue
      stats = [mean_std(v) for v in values]
      ax.errorbar(NODES, [m for m, _, _ in stats], yerr=[0 if np.isnan(s) else s for _, s, _ in stats],
                  marker="o", capsize=3, label=objective if objective != "last_value" else "last LAB//A value")
    ax.set(title=task, xlabel="decision node", ylabel="AUROC (mean ± std over seeds)")
  axes[0][0].legend(fontsize=7)
  for objective in objectives:
    color = f"C{objectives.index(objective)}"
    for i, unit in enumerate(groups[objective]):
      curves = unit["curves"]
      axes[0][-2].plot(curves["step"], curves["sft_loss"], color=color, lw=0.7, label=objective if not i else None)
      axes[0][-1].plot(curves["step"], curves["z_hat_std_mean"], color=color, lw=0.7,
                       label=objective if not i else None)
  axes[0][-2].set(title="train SFT loss", xlabel="step", ylim=(None, 4.0))
  axes[0][-1].set(title="collapse monitor: mean per-dim std of ẑ", xlabel="step", yscale="log")
  axes[0][-1].axhline(0.05, color="grey", lw=0.5)
  axes[0][-2].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="*", type=pathlib.Path, help="probed EHR run directories to collect first")
  parser.add_argument("--data", type=pathlib.Path, default=pathlib.Path("docs/results") / DATA_FILE,
                      help="the data JSON (default: %(default)s); workdirs given are added to it")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/results"),
                      help="where the page and plots go (default: %(default)s)")
  parser.add_argument("--name", default="jepa_ehr", help="file name stem of the outputs (default: %(default)s)")
  args = parser.parse_args(argv)
  data = json.loads(args.data.read_text()) if args.data.is_file() else {"units": {}, "setup": {"cpu": cpu_name()}}
  for workdir in args.runs:
    if not (workdir / "probe" / "probe.json").is_file():
      print(f"skipping {workdir}: no probe/probe.json")
      continue
    data["units"][workdir.name] = {"group": "main", **unit_record(workdir)}
  if args.runs:
    args.data.write_text(json.dumps(data, indent=1) + "\n")
  print(render(data, args.out, args.name))


if __name__ == "__main__":
  main()
