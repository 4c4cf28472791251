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
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

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


def load(path):
  return json.loads(path.read_text()) if path.exists() else {"rows": {}, "units": {}, "commands": []}


def save(data, path, commit, message):
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(data, indent=1) + "\n")
  tmp.replace(path)
  if commit:
    for _ in range(5):
      add = subprocess.run(["git", "add", str(path)], cwd=ROOT, capture_output=True)
      done = add.returncode == 0 and subprocess.run(["git", "commit", "-q", "-m", message, "--", str(path)],
                                                    cwd=ROOT, capture_output=True).returncode == 0
      if done:
        return
      time.sleep(5)  # another helper's commit holds the index lock
    print(f"note: could not commit {path} (git lock); the file is written", file=sys.stderr)


def run_unit(row, seed, a, data, path):
  args = train_args(row, seed, a)
  workdir = ROOT / args[3]
  cmd = "scripts/train " + " ".join(args)
  print("+", cmd, flush=True)
  cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
  wall0 = time.time()
  subprocess.run([sys.executable, "-m", "tessera.trainer", "train", *args], cwd=ROOT, check=True,
                 stdout=subprocess.DEVNULL)
  cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  if row not in data["rows"]:
    data["rows"][row] = row_facts(row, workdir)
  unit = summarize_unit(workdir, data["rows"][row]["warmup_steps"])
  unit.update(cpu_s=(cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), wall_s=time.time() - wall0,
              seed=seed, row=row)
  data["units"][f"{row}/s{seed}"] = unit
  data["commands"].append(cmd)
  save(data, path, a.commit, f"stem results: {row} seed {seed} ({unit['final_eval_loss']:.4f})")


def run_edit(a, data, path):
  workdir = pathlib.Path(a.runs) / "stem_1_2_s0"
  cmd = ["scripts/edit_knowledge.py", "--workdir", str(workdir), "--prompt", EDIT["prompt"], "--swap", EDIT["swap"],
         "--max-new-tokens", "30", "--json"]
  print("+", " ".join(cmd), flush=True)
  out = subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True, capture_output=True, text=True).stdout
  data["edit"] = {"command": " ".join(cmd), **json.loads(out)}
  save(data, path, a.commit, "stem results: knowledge-editing demo")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", default="dense,stem_1_2",
                 help=f"comma-separated rows to run, in order; of {','.join(ROWS)} (default: %(default)s)")
  p.add_argument("--seeds", type=int, default=3, help="seeds per row (default: %(default)s)")
  p.add_argument("--steps", type=int, default=300, help="train steps per run (default: %(default)s)")
  p.add_argument("--runs", default="runs/stem_results", help="run directories (default: %(default)s)")
  p.add_argument("--out", default="docs/results", help="data, page and plot (default: %(default)s)")
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
  data = load(path)
  if not a.render_only:
    data["setup"] = {"steps": a.steps, "seeds": a.seeds, "planned_rows": rows,
                     "cpu": "2 cores of an Intel Xeon (Sapphire Rapids class), shared with other jobs",
                     "xla_flags": __import__("os").environ.get("XLA_FLAGS", "")}
    for seed in range(a.seeds):  # seed-major: every row gets seed 0 before any row gets seed 1
      for row in rows:
        if f"{row}/s{seed}" not in data["units"]:
          run_unit(row, seed, a, data, path)
      if seed == 0 and "edit" not in data and "stem_1_2" in rows:
        run_edit(a, data, path)


if __name__ == "__main__":
  main()
