"""STEM vs its dense twin at CPU scale: runs, committed data and docs/results/stem.md, all from this one script.

  scripts/stem_results.py                       # run the missing (row, seed) units, then render the page
  scripts/stem_results.py --rows dense,stem_1_2,stem_1_2_normal1 --seeds 3 --commit
  scripts/stem_results.py --render-only         # page + plot from docs/results/stem_data.json alone

A unit is one row (dense, STEM 1/2, ...) at one seed: `scripts/train --config configs/stem.py:small[_dense]` for
300 steps of 16 x 256 tokens. The seed sets init and data order, so the rows of one seed see identical batches.
Resumable: each finished unit goes into <out>/stem_data.json at once (with --commit also into git); a rerun skips
finished units and an interrupted training run resumes from its own checkpoint. Rows never run are listed on the page
as not run, with the measured cost that kept them out.
"""
import argparse
import json
import os
import pathlib
import resource
import shlex
import subprocess
import sys
import time

import numpy as np

import results_data
from results_data import fmt, mean_std

ROOT = pathlib.Path(__file__).resolve().parents[1]
# name: (label, config variant, overrides). Order = priority when CPU time is short.
ROWS = {
    "dense": ("dense SwiGLU (`small_dense`)", "small_dense", []),
    "stem_1_2": ("STEM 1/2, xavier tables (`small`)", "small", []),
    "stem_1_2_normal1": ("STEM 1/2, `table_init=normal_1`", "small", ["--config.model.stem.table_init=normal_1"]),
    "stem_1_3": ("STEM 1/3", "small", ["--config.model.stem.layers=1/3"]),
    "stem_all": ("STEM all", "small", ["--config.model.stem.layers=all"]),
}
DATA_FILE = "stem_data.json"
EDIT = {"prompt": "Country: Spain. Capital:", "swap": "Spain=Germany"}


def train_args(row, seed, a):
  _, variant, overrides = ROWS[row]
  return ["--config", f"configs/stem.py:{variant}", "--workdir", str(pathlib.Path(a.runs) / f"{row}_s{seed}"),
          f"--config.seed={seed}", f"--config.train.steps={a.steps}", f"--config.optim.warmup_steps={a.steps // 10}",
          f"--config.eval.every_steps={a.steps // 6}", f"--config.checkpoint.every_steps={a.steps // 6}",
          "--config.train.log_every_steps=1", *overrides]


def read_metrics(workdir):
  from tessera.trainer import metrics
  by_tag = {}
  for record in metrics.read_metrics(workdir):
    for tag, value in record.items():
      if "/" in tag:
        by_tag.setdefault(tag, {})[record["step"]] = value
  return by_tag


def summarize_unit(workdir, warmup_steps):
  """What the page needs from one finished run (its metrics.jsonl and summary.json)."""
  m = read_metrics(workdir)
  train = m["train/loss"]
  after = [s for s in sorted(train) if s > warmup_steps]
  sampled = sorted(train)[::max(len(train) // 6, 1)]
  return {
      "eval_loss": {str(s): v for s, v in sorted(m["eval/loss"].items())},
      "final_eval_loss": json.loads((workdir / "summary.json").read_text())["eval_loss"],
      "max_loss_jump_after_warmup": max(train[b] - train[a] for a, b in zip(after, after[1:])),
      "tokens_per_second_median": float(np.median([v for s, v in m["train/tokens_per_second"].items() if s > 5])),
      "grad_norm": {group: {str(s): m[f"train/grad_norm/{group}"][s] for s in sampled}
                    for group in ("default", "group0") if f"train/grad_norm/{group}" in m},
  }


def row_facts(row, workdir):
  """Seed-independent facts of a row: parameter/FLOP counts and the fraction of table rows a batch touches."""
  from tessera.configs import defaults  # noqa: F401  (tessera importable)
  from tessera.models import registry
  from tessera.models import stem
  from tessera.trainer import config_loader, loop
  config = config_loader.from_json(workdir / "config.json")
  facts = {"label": ROWS[row][0], "stem_layers": list(stem.stem_layers(config.model)),
           "table_init": config.model.stem.table_init, "vocab_size": config.model.vocab_size,
           "counts": registry.ACCOUNTING["stem"](config.model, config.train.seq_len),
           "tokens_per_step": config.train.batch_size * config.train.seq_len, "warmup_steps": config.optim.warmup_steps}
  if facts["stem_layers"]:
    it = loop.build_pipeline(config, workdir).train_batches(0, slice(None))
    facts["rows_touched"] = float(np.mean([len(np.unique(next(it)["inputs"])) / config.model.vocab_size
                                           for _ in range(20)]))
  return facts


def run_unit(row, seed, a, data, path):
  args = train_args(row, seed, a)
  workdir = ROOT / args[3]
  cmd = "scripts/train " + " ".join(args)
  print("+", cmd, flush=True)
  finished_before = (workdir / "summary.json").exists()  # another worker ran it: only collected here
  cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
  wall0 = time.time()
  subprocess.run([sys.executable, "-m", "tessera.trainer", "train", *args], cwd=ROOT, check=True,
                 stdout=subprocess.DEVNULL)
  cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  if row not in data["rows"]:
    data["rows"][row] = row_facts(row, workdir)
  unit = summarize_unit(workdir, data["rows"][row]["warmup_steps"])
  cpu_s = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
  unit.update(cpu_s=None if finished_before else cpu_s, wall_s=None if finished_before else time.time() - wall0,
              seed=seed, row=row)
  data["units"][f"{row}/s{seed}"] = unit
  data["commands"].append(cmd)
  results_data.save(path, data, ROOT / a.runs, a.commit,
                    f"stem results: {row} seed {seed} ({unit['final_eval_loss']:.4f})")


def run_edit(a, data, path):
  workdir = pathlib.Path(a.runs) / "stem_1_2_s0"
  cmd = ["scripts/edit_knowledge.py", "--workdir", str(workdir), "--prompt", EDIT["prompt"], "--swap", EDIT["swap"],
         "--max-new-tokens", "30", "--json"]
  print("+", " ".join(cmd), flush=True)
  out = subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True, capture_output=True, text=True).stdout
  data["edit"] = {"command": " ".join(cmd), **json.loads(out)}
  results_data.save(path, data, ROOT / a.runs, a.commit, "stem results: knowledge-editing demo")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", default="dense,stem_1_2",
                 help=f"comma-separated rows to run, in order; of {','.join(ROWS)} (default: %(default)s)")
  p.add_argument("--seeds", type=int, default=3, help="seeds per row (default: %(default)s)")
  p.add_argument("--steps", type=int, default=300, help="train steps per run (default: %(default)s)")
  p.add_argument("--runs", default="runs/stem_results", help="run directories (default: %(default)s)")
  p.add_argument("--out", default="docs/results", help="data, page and plot (default: %(default)s)")
  p.add_argument("--seed", type=int, default=None,
                 help="run only this seed (a second worker; a later run without it collects the finished runs)")
  p.add_argument("--commit", action="store_true", help="git-commit the data file after each finished unit")
  p.add_argument("--render-only", action="store_true", help="only write the page and plot from the data file")
  a = p.parse_args()
  rows = a.rows.split(",")
  unknown = [r for r in rows if r not in ROWS]
  if unknown:
    print(f"stem_results: --rows: unknown row {unknown[0]!r}; choose from {','.join(ROWS)}", file=sys.stderr)
    sys.exit(2)
  out = ROOT / a.out
  out.mkdir(parents=True, exist_ok=True)
  path = out / DATA_FILE
  data = {"rows": {}, "units": {}, "commands": [], **results_data.load(path)}
  if not a.render_only:
    data["setup"] = {"steps": a.steps, "seeds": a.seeds, "planned_rows": rows,
                     "cpu": "2 cores of an Intel Xeon (Sapphire Rapids class), shared with other jobs",
                     "xla_flags": os.environ.get("XLA_FLAGS", "")}
    seeds = range(a.seeds) if a.seed is None else [a.seed]
    for seed in seeds:  # seed-major: every row gets seed 0 before any row gets seed 1
      for row in rows:
        if f"{row}/s{seed}" not in data["units"]:
          run_unit(row, seed, a, data, path)
      if seed == 0 and "edit" not in data and "stem_1_2" in rows:
        run_edit(a, data, path)
  render(data, out)


# ---- the page, from the data file alone ----

def units_of(data, row):
  return sorted((u for u in data["units"].values() if u["row"] == row), key=lambda u: u["seed"])


def paired_delta(data, row, base="dense"):
  """Per seed: row's final eval loss minus the base row's (same seed = same init stream and batches)."""
  base_by_seed = {u["seed"]: u["final_eval_loss"] for u in units_of(data, base)}
  return [u["final_eval_loss"] - base_by_seed[u["seed"]] for u in units_of(data, row) if u["seed"] in base_by_seed]


def curves(units):
  steps = sorted({int(s) for u in units for s in u["eval_loss"]})
  steps = [s for s in steps if all(str(s) in u["eval_loss"] for u in units)]
  return np.array(steps), np.array([[u["eval_loss"][str(s)] for s in steps] for u in units])


def plot(data, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for row in ROWS:
    units = units_of(data, row)
    if not units:
      continue
    facts = data["rows"][row]
    steps, loss_SxN = curves(units)
    std = loss_SxN.std(0, ddof=1) if len(units) > 1 else np.zeros(len(steps))
    tokens = steps * facts["tokens_per_step"]
    label = f"{facts['label']}, layers {facts['stem_layers'] or '[]'} ({len(units)} seeds)"
    for ax, x in ((axes[0], tokens / 1e6), (axes[1], tokens * facts["counts"]["train_flops_per_token"] / 1e12)):
      ax.errorbar(x, loss_SxN.mean(0), yerr=std, marker="o", capsize=3, label=label)
  axes[0].set_xlabel("training tokens (M)")
  axes[1].set_xlabel("training FLOPs (TFLOP: 6 x active matmul params + attention, per token)")
  for ax in axes:
    ax.set_ylabel("eval loss (nats/byte), mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle("STEM vs dense SwiGLU, configs/stem.py:small, same batches per seed")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def render(data, out):
  """docs/results/stem.md and stem_loss.png from the data file."""
  plot(data, out / "stem_loss.png")
  setup, run_rows = data["setup"], [r for r in ROWS if units_of(data, r)]
  any_unit = next(iter(data["units"].values()))
  facts0 = data["rows"][any_unit["row"]]
  tokens = setup["steps"] * facts0["tokens_per_step"]
  cost = [u["cpu_s"] for u in data["units"].values() if u["cpu_s"] is not None] or [float("nan")]
  lines = [
      "# STEM vs dense at CPU scale", "",
      "Generated by `scripts/stem_results.py` from `stem_data.json` (every number below is in that file; rerun "
      "`scripts/stem_results.py --render-only` to rebuild this page, or without it to add seeds or rows).", "",
      "STEM (arXiv 2601.10639; spec `../../shared/specs/stem.md`) against its dense SwiGLU twin with identical "
      "optimizer, data order and tokens: `configs/stem.py:small` (d=128, L=4, 4 heads, F=384, byte vocab padded to "
      f"V={facts0['vocab_size']}, untied embeddings, Lingua init by parameter role (since issue 16 every `mlp/down` starts "
      "at F^-0.5 although V = F here; the page before it had d^-0.5), AdamW with the tables in their own "
      f"clipping group) and `:small_dense`, {setup['steps']} steps of 16 x 256 tokens ({tokens / 1e6:.2f}M tokens) "
      f"on the embedded corpus, warmup {facts0['warmup_steps']} steps, seeds 0..{setup['seeds'] - 1} (the seed "
      "sets init and data order; the rows of one seed see the same batches). Eval: 8 validation batches, nats per "
      f"byte. CPU: {setup['cpu']}; XLA single-threaded (`{setup['xla_flags']}`). No GPU was lent, so the H200 "
      "column is not run.", "",
      "## Command", "", "```bash",
      f"scripts/stem_results.py --rows {','.join(setup['planned_rows'])} --seeds {setup['seeds']} --commit",
      "```", "One of the training commands it issued (all are in `stem_data.json[\"commands\"]`):", "```bash",
      data["commands"][0], "```", "",
      "## Results", "",
      "| model | STEM layers | stored params | active params | FLOPs/token (paper, 2 x active) | train FLOPs/token "
      f"(MFU) | eval loss @ {tokens / 1e6:.2f}M tokens | Δ vs dense (paired) | tokens/s (CPU, shared) | "
      "tokens/s (H200) | max loss jump after warmup | table rows touched/step |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in ROWS:
    units = units_of(data, row)
    if not units:
      continue
    f, c = data["rows"][row], data["rows"][row]["counts"]
    delta = paired_delta(data, row)
    touched = f"{f['rows_touched']:.1%}" if "rows_touched" in f else "-"
    lines.append(
        f"| {f['label']} | {f['stem_layers'] or '[]'} | {c['params_stored']:,} | {c['params_active']:,} | "
        f"{c['flops_per_token_paper']:,.0f} | {c['train_flops_per_token']:,.0f} | "
        f"{fmt([u['final_eval_loss'] for u in units], 4)}{f' (n={len(units)})' if len(units) > 1 else ''} | "
        f"{fmt(delta, 4) if row != 'dense' and delta else '-'} | "
        f"{np.median([u['tokens_per_second_median'] for u in units]):,.0f} | not run (no GPU) | "
        f"{max(u['max_loss_jump_after_warmup'] for u in units):+.3f} | {touched} |")
  lines += ["", "Mean ± sample std (ddof=1) over seeds. \"Δ vs dense (paired)\": per seed, the row's final eval "
            "loss minus the dense run's of the same seed. tokens/s: median step throughput of each run, then the "
            "median over seeds, measured while other jobs shared the 2 cores: not comparable between rows (the "
            "side-by-side step-time comparison is `scripts/bench --stem`, in `docs/perf.md`).", ""]
  missing = [r for r in ROWS if r not in run_rows]
  if missing:
    per_row = 3 * np.mean(cost) / 60
    lines += ["Not run: " + ", ".join(f"{ROWS[r][0]}" for r in missing) +
              f". A row of 3 seeds costs about {per_row:.0f} CPU-minutes here (measured: {np.mean(cost) / 60:.1f} "
              "CPU-minutes per run); the CPU budget of this page (~30 CPU-minutes on a 2-core machine shared by "
              "five jobs) went to 3 seeds of the rows the comparison needs first ("
              + ", ".join(ROWS[r][0] for r in run_rows) + ") rather than to more rows at one seed. "
              f"`scripts/stem_results.py --rows {','.join(ROWS)}` adds them.", ""]
  lines += ["![eval loss vs tokens and vs training FLOPs, error bars = std over seeds](stem_loss.png)", "",
            "Eval loss at equal tokens (mean ± std over seeds):", ""]
  steps, _ = curves(units_of(data, run_rows[0]))
  lines += ["| row | " + " | ".join(f"step {s} ({s * facts0['tokens_per_step'] / 1e6:.2f}M)" for s in steps) + " |",
            "|---|" + "---|" * len(steps)]
  for row in run_rows:
    st, loss_SxN = curves(units_of(data, row))
    lines.append(f"| {data['rows'][row]['label']} | " + " | ".join(fmt(loss_SxN[:, i], 3) for i in range(len(st)))
                 + " |")
  lines += ["", "## What the numbers say", ""] + findings(data, run_rows, tokens) + [""]
  lines += grad_norm_section(data, run_rows) + edit_section(data) + [
      "## Step time and host offload", "",
      "Step-time ratios (dense AdamW vs `optim.stem_update=sparse_rows` at V = 32768, measured side by side by "
      "`scripts/bench --stem`) and the host-offload path are in `docs/perf.md` (STEM section); "
      "they are not regenerated by this script.", ""]
  (out / "stem.md").write_text("\n".join(lines))
  print(f"wrote {out / 'stem.md'} and {out / 'stem_loss.png'}")


def findings(data, run_rows, tokens):
  out = []
  for row in run_rows:
    if row == "dense":
      continue
    delta = paired_delta(data, row)
    if not delta:
      continue
    m, s, n = mean_std(delta)
    lower = sum(d < 0 for d in delta)
    verdict = ("below" if m < 0 else "above")
    out.append(f"- {data['rows'][row]['label']}: final eval loss {verdict} dense by {abs(m):.4f} nats"
               + (f" (paired std {s:.4f}, n={n}); lower than dense in {lower} of {n} seeds." if n > 1 else
                  " (one seed: no spread measured)."))
  for row in run_rows:
    by_seed = {u["seed"]: u for u in units_of(data, row)}
    base = {u["seed"]: u for u in units_of(data, "dense")}
    seeds = [s for s in by_seed if s in base] if row != "dense" else []
    if len(seeds) > 1:
      steps = sorted(int(k) for k in by_seed[seeds[0]]["eval_loss"])
      diffs = [fmt([by_seed[s]["eval_loss"][str(t)] - base[s]["eval_loss"][str(t)] for s in seeds], 3) for t in steps]
      out.append(f"- {data['rows'][row]['label']} minus dense along training (paired, steps "
                 f"{', '.join(map(str, steps))}): " + "; ".join(diffs) + " nats.")
  jumps = [u["max_loss_jump_after_warmup"] for u in data["units"].values()]
  out.append(f"- Loss spikes (spec check 9: the largest step-to-step train-loss increase after warmup < 0.5 nats): "
             f"largest over all runs {max(jumps):+.3f} nats; "
             + ("criterion met." if max(jumps) < 0.5 else "criterion NOT met."))
  out.append(f"- Scale: {tokens / 1e6:.2f}M tokens on a 1M-parameter byte model. The paper's gains are reported at "
             "100B-1T tokens; this page checks the mechanics and the direction at equal tokens, not the paper's "
             "numbers.")
  return out


def grad_norm_section(data, run_rows):
  lines = ["## Per-group gradient norms", "",
           "`train/grad_norm/default` (backbone) and `/group0` (the STEM tables; each group is clipped at 1.0 on "
           "its own), mean over seeds at sampled steps:", "",
           ]
  rows_with_tables = [r for r in run_rows if data["rows"][r]["stem_layers"]]
  if not rows_with_tables:
    return lines + ["(no STEM row run)", ""]
  steps = sorted(units_of(data, rows_with_tables[0])[0]["grad_norm"]["default"], key=int)
  lines += ["| row | group | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|---|" + "---|" * len(steps)]
  for row in rows_with_tables:  # a dense run has one group: its norm is the total, logged as train/grad_norm
    units = units_of(data, row)
    for group, name in (("default", "backbone"), ("group0", "tables")):
      vals = [np.mean([u["grad_norm"][group][s] for u in units]) for s in steps]
      lines.append(f"| {data['rows'][row]['label']} | {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
  return lines + [""]


def edit_section(data):
  e = data.get("edit")
  if e is None:
    return ["## Knowledge editing", "", "Not run (the STEM 1/2 seed-0 run is missing).", ""]
  before, after = e["logprob_of_unedited_next_token"]
  same = "unchanged" if e["before"] == e["after"] else "changed"
  command = shlex.join(["scripts/edit_knowledge", "--workdir", e["command"].split("--workdir ")[1].split()[0],
                        "--prompt", EDIT["prompt"], "--swap", EDIT["swap"], "--max-new-tokens", "30"])
  return ["## Knowledge editing on the small model", "", "```", command, "```", "",
          f"mode {e['mode']} ({e['source_tokens']} source tokens, {e['target_tokens']} target tokens); greedy "
          f"continuation {same} by the edit: before {e['before']!r}, after {e['after']!r}; largest next-token "
          f"log-prob change {e['max_abs_logprob_change_next_token']:.4f} nats; the unedited next token "
          f"{before:.4f} -> {after:.4f}. A 1M-parameter byte model trained on 1.2M tokens of code and docs holds no "
          "facts to swap: the demonstration is that the edit moves the distribution through the lookups alone.", ""]


if __name__ == "__main__":
  main()
