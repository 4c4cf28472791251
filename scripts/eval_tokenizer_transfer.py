"""`scripts/eval_tokenizer_transfer --workdir runs/zett --tokenizers A,B,C` (issue 13; zett.md §7, "Results").

Reports bits per byte (tokenizer-agnostic) and tokens per byte on held-out prose and code for: the original model
with its own tokenizer; each target tokenizer with hypernetwork, FVT, lexical-copy and random embeddings; with
`--continue-steps N` (default 500; 0 skips) the hypernetwork- and FVT-initialised models after N steps of continued
training (scripts/transfer_tokenizer + scripts/train, bits per byte every N/5 steps for the plot); with
`--ablations DIR` the four {non-residual, residual} x {with, without aux} hypernetworks (trained by this script
into DIR from the base run when missing: `--ablation-steps`, default 500). `--tokenizers default` builds the §8
held-out targets (code-only BPE 4096, prose-only Unigram 4096, mix Unigram 12000; cached).

Resumable: every measured number is stored in `--out-dir` (default <workdir>/transfer_eval/results.json) as soon as
it exists and never recomputed; runs it trains are ordinary tessera runs (resumed by the trainer). Writes
`--results` (markdown, default docs/results/zett.md), its numbers as JSON and a PNG of bits/byte vs
continued-training steps beside it, with the CPU time (this process and its children) spent so far. Exit 2 with one line for bad input.
"""
import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import zett_eval_lib  # noqa: E402
import transfer_tokenizer  # noqa: E402

from tessera.data import text_tokenizer  # noqa: E402
from tessera.data import zett_corpus  # noqa: E402
from tessera.data import zett_surface  # noqa: E402
from tessera.data.prepare_io import DataError  # noqa: E402
from tessera.trainer import checkpoint as ckpt_lib  # noqa: E402
from tessera.trainer import config_loader  # noqa: E402
from tessera.trainer import inspect_run  # noqa: E402
from tessera.trainer.config_loader import ConfigError  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("hypernet", "fvt", "lexical", "random")
DOMAINS = ("prose", "code")
DEFAULT_TARGETS = (("code_bpe4096", "bpe", 4096, "code"), ("prose_unigram4096", "unigram", 4096, "prose"),
                   ("mix_unigram12000", "unigram", 12000, "mix"))
ABLATIONS = {"nonresidual_aux": (False, 0.5), "nonresidual_noaux": (False, 0.0), "residual_aux": (True, 0.5),
             "residual_noaux": (True, 0.0)}


def parse(argv):
  p = argparse.ArgumentParser(prog="eval_tokenizer_transfer", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a trained ZeTT run")
  p.add_argument("--tokenizers", required=True, help="comma-separated tokenizer.json paths, or 'default'")
  p.add_argument("--out-dir", default="", help="where results.json and trained runs go (<workdir>/transfer_eval)")
  p.add_argument("--results", default="docs/results/zett.md", help="the results page to write (JSON and PNG beside it)")
  p.add_argument("--continue-steps", type=int, default=500, help="steps of continued training per initialisation")
  p.add_argument("--ablations", default="", help="directory of the four ablation runs (trained when missing)")
  p.add_argument("--ablation-steps", type=int, default=500, help="train steps of each ablation run")
  p.add_argument("--ablation-config", default="configs/zett.py:small", help="the config the ablation runs train")
  p.add_argument("--max-chars", type=int, default=0, help="cap held-out characters per domain (0: all)")
  p.add_argument("--seeds", type=int, default=1, help="seeds of the random / lexical baselines")
  return p.parse_args(argv)


class Store:
  """results.json: nested dict, written after every new number."""

  def __init__(self, path):
    self.path = path
    self.data = json.loads(path.read_text()) if path.is_file() else {}

  def get(self, *keys):
    node = self.data
    for k in keys:
      if not isinstance(node, dict) or k not in node:
        return None
      node = node[k]
    return node

  def put(self, value, *keys):
    node = self.data
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = value
    tmp = self.path.with_suffix(".tmp")
    tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
    tmp.replace(self.path)


def default_targets(cache_dir=""):
  """The §8 held-out target tokenizers, trained once on the train split and cached."""
  train = [d for d in zett_corpus.train_docs() if d.text.strip()]
  root = zett_corpus.cache_root(cache_dir) / "zett_targets"
  root.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, kind, size, domain in DEFAULT_TARGETS:
    path = root / f"{name}.json"
    if not path.is_file():
      texts = [d.text for d in train if domain == "mix" or (domain == "prose") == zett_corpus.is_prose(d)]
      text_tokenizer.train(kind, texts, size).save(str(path) + ".tmp")
      os.replace(str(path) + ".tmp", path)
    paths.append(path)
  return paths


def target_paths(spec, cache_dir=""):
  if spec == "default":
    return default_targets(cache_dir)
  paths = [pathlib.Path(p) for p in spec.split(",") if p]
  for p in paths:
    try:
      text_tokenizer.load_file(p)
    except DataError as e:
      raise ConfigError(f"--tokenizers: {e}") from None
  return paths


class Evaluator:
  """The zett run's model, its old tokenizer and the held-out text; scores any (tokenizer, tables)."""

  def __init__(self, workdir, max_chars):
    self.config, self.factory, variables, self.step, _ = inspect_run.load_variables(workdir)
    with self.factory.context():
      self.model = self.factory.model(variables["params"], variables["frozen"], variables["model_state"])
    self.old = text_tokenizer.load_file(pathlib.Path(workdir) / "data" / "tokenizer.json")
    self.forms = zett_surface.SurfaceForms(self.old, self.config.model.vocab_size, self.config.model.zett.maxlen)
    self.texts = zett_eval_lib.held_out(max_chars)
    self.seq_len = self.config.train.seq_len
    self.scorer = zett_eval_lib.Scorer(self.model)

  def arrays(self, tokenizer):
    return self.forms.arrays(tokenizer, tokenizer.get_vocab_size(with_added_tokens=True))

  def score(self, tokenizer, e_in, e_out, arrays=None, scorer=None):
    arrays = arrays or self.arrays(tokenizer)
    scorer = scorer or self.scorer
    return {d: scorer.bits_per_byte(tokenizer, self.texts[d], self.seq_len, e_in, e_out, arrays.valid_N,
                                    arrays.bytes_N, self.forms.pad_id) for d in DOMAINS}

  def original(self):
    arrays = self.forms.arrays(self.old, self.config.model.vocab_size)
    return self.score(self.old, np.asarray(self.model.e_in()), np.asarray(self.model.e_out()), arrays)

  def tables(self, method, tokenizer, seed=0):
    arrays = self.arrays(tokenizer)
    with self.factory.context():
      e_in, e_out = transfer_tokenizer.tables(method, self.model, self.forms, self.old, tokenizer, arrays, seed)
    return e_in, e_out, arrays


def cpu_seconds():
  own = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_cmd(args):
  result = subprocess.run([str(a) for a in args], cwd=ROOT, capture_output=True, text=True)
  if result.returncode != 0:
    raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
  return result.stdout


def zero_shot(ev, store, targets, seeds):
  if store.get("original") is None:
    store.put(ev.original(), "original")
  for path in targets:
    tokenizer = text_tokenizer.load_file(path)
    for method in METHODS:
      for seed in range(seeds if method in ("lexical", "random") else 1):
        key = method if seed == 0 else f"{method}_seed{seed}"
        if store.get("zero_shot", path.stem, key) is None:
          e_in, e_out, arrays = ev.tables(method, tokenizer, seed)
          store.put(ev.score(tokenizer, e_in, e_out, arrays), "zero_shot", path.stem, key)
          print(f"{path.stem} {key}: {store.get('zero_shot', path.stem, key)}", file=sys.stderr, flush=True)


def continued(ev, store, workdir, targets, out_dir, steps):
  """Hypernet- and FVT-initialised decoders trained `steps` more on the train split under each target tokenizer;
  held-out bits/byte at 0, steps/5, ..., steps (from the checkpoints)."""
  every = max(steps // 5, 1)
  for path in targets:
    tokenizer = text_tokenizer.load_file(path)
    arrays = ev.arrays(tokenizer)
    for method in ("hypernet", "fvt"):
      if store.get("continued", path.stem, method, str(steps)) is not None:
        continue
      transferred = out_dir / f"{path.stem}_{method}"
      if not (transferred / "config.json").is_file():
        run_cmd([ROOT / "scripts" / "transfer_tokenizer", "--workdir", workdir, "--tokenizer", path, "--out",
                 transferred, "--method", method])
      trained = out_dir / f"{path.stem}_{method}_train"
      run_cmd([ROOT / "scripts" / "train", "--config", f"configs/zett_continue.py:{transferred}", "--workdir", trained,
               f"--config.init.workdir={transferred}", "--config.init.strict=True", f"--config.train.steps={steps}",
               f"--config.checkpoint.every_steps={every}", f"--config.checkpoint.max_to_keep={steps // every + 1}"])
      for step in [0] + list(range(every, steps + 1, every)):
        if store.get("continued", path.stem, method, str(step)) is not None:
          continue
        run = transferred if step == 0 else trained
        params = decoder_params(run, step if step else None)
        scorer = zett_eval_lib.Scorer(ev.model, lm_state(ev, params))
        e_in, e_out = params["embed"], params["unembed"].T
        store.put(ev.score(tokenizer, e_in, e_out, arrays, scorer), "continued", path.stem, method, str(step))


def decoder_params(run, step=None):
  """A decoder run's params (trained and frozen) at `step` (latest when None), as numpy."""
  _, factory, variables, latest, _ = inspect_run.load_variables(run)
  if step is not None and step != latest:
    checkpointer = ckpt_lib.Checkpointer(ckpt_lib.absolute(run), factory.config.checkpoint)
    variables = inspect_run.restore_variables(checkpointer, step, factory)
    checkpointer.close()
  import jax
  return jax.tree.map(np.asarray, factory.all_params(variables["params"], variables["frozen"]))


def lm_state(ev, params):
  """The zett model's state with its LM's blocks / final norm replaced by `params` (tables are passed apart)."""
  from flax import nnx
  _, state = nnx.split(ev.model)
  pure = nnx.to_pure_dict(state)
  lm = dict(pure["lm"])
  for key, value in params.items():
    if key not in ("embed", "unembed"):
      lm[key] = value
  pure["lm"] = lm
  nnx.replace_by_pure_dict(state, pure)
  return state


def ablations(ev, store, workdir, targets, directory, steps, config="configs/zett.py:small"):
  base = ev.config.init.workdir
  if not base:
    raise ConfigError(f"--ablations: {workdir} records no init.workdir (the base run to train them from)")
  for name, (residual, aux) in ABLATIONS.items():
    run = directory / name
    if store.get("ablation", name, "done") is None:
      run_cmd([ROOT / "scripts" / "train", "--config", config, "--workdir", run,
               f"--config.init.workdir={base}", f"--config.model.zett.residual={residual}",
               f"--config.loss.zett.aux_weight={aux}", f"--config.train.steps={steps}"])
      store.put(True, "ablation", name, "done")
    sub = None
    for path in targets:
      if store.get("ablation", name, path.stem) is None:
        sub = sub or Evaluator(run, 0)
        sub.texts = ev.texts
        tokenizer = text_tokenizer.load_file(path)
        e_in, e_out, arrays = sub.tables("hypernet", tokenizer)
        store.put(sub.score(tokenizer, e_in, e_out, arrays), "ablation", name, path.stem)


def fmt(x):
  return "–" if x is None else f"{x:.3f}"


def write_markdown(store, results, cpu):
  d = store.data
  lines = ["# ZeTT at CPU scale (issue 13)", "",
           "Written by `scripts/eval_tokenizer_transfer` (resumable; numbers in its results.json). Bits per byte "
           "are tokenizer-agnostic (CE summed over predicted tokens / their UTF-8 bytes) on the held-out 10% of "
           "the embedded corpus (whole files), split into prose and code.", "",
           f"CPU time so far: {cpu / 3600:.2f} h (this script and the runs it launched).", "",
           "## Zero-shot transfer", "",
           "| target | tok/byte prose | tok/byte code | method | bpb prose | bpb code |", "|---|---|---|---|---|---|"]
  orig = d.get("original", {})
  if orig:
    lines.append(f"| T_old (original) | {fmt(orig['prose']['tokens_per_byte'])} | "
                 f"{fmt(orig['code']['tokens_per_byte'])} | original | {fmt(orig['prose']['bits_per_byte'])} | "
                 f"{fmt(orig['code']['bits_per_byte'])} |")
  for target, methods in d.get("zero_shot", {}).items():
    for method, r in methods.items():
      lines.append(f"| {target} | {fmt(r['prose']['tokens_per_byte'])} | {fmt(r['code']['tokens_per_byte'])} | "
                   f"{method} | {fmt(r['prose']['bits_per_byte'])} | {fmt(r['code']['bits_per_byte'])} |")
  if d.get("continued"):
    lines += ["", "## Continued training (bits per byte, prose / code)", "",
              "| target | init | " + " | ".join(f"step {s}" for s in _steps(d)) + " |",
              "|---|---|" + "---|" * len(_steps(d))]
    for target, methods in d["continued"].items():
      for method, by_step in methods.items():
        cells = [f"{fmt(by_step[s]['prose']['bits_per_byte'])} / {fmt(by_step[s]['code']['bits_per_byte'])}"
                 if s in by_step else "–" for s in _steps(d)]
        lines.append(f"| {target} | {method} | " + " | ".join(cells) + " |")
  if d.get("ablation"):
    lines += ["", "## Ablation: residual x auxiliary loss (hypernet zero-shot, bpb prose / code)", "",
              "| run | " + " | ".join(t for t in d.get("zero_shot", {})) + " |",
              "|---|" + "---|" * len(d.get("zero_shot", {}))]
    for name, by_target in d["ablation"].items():
      cells = [f"{fmt(by_target[t]['prose']['bits_per_byte'])} / {fmt(by_target[t]['code']['bits_per_byte'])}"
               if t in by_target else "–" for t in d.get("zero_shot", {})]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
  results.parent.mkdir(parents=True, exist_ok=True)
  results.write_text("\n".join(lines) + "\n")


def _steps(d):
  steps = {s for m in d.get("continued", {}).values() for by in m.values() for s in by}
  return sorted(steps, key=int)


def plot(store, png):
  d = store.data.get("continued")
  if not d:
    return
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for target, methods in d.items():
    for method, by_step in methods.items():
      steps = sorted(by_step, key=int)
      ax.plot([int(s) for s in steps], [by_step[s]["code"]["bits_per_byte"] for s in steps],
              ("-" if method == "hypernet" else "--"), marker="o", label=f"{target} {method}")
  if "original" in store.data:
    ax.axhline(store.data["original"]["code"]["bits_per_byte"], color="k", lw=0.8, label="original (T_old)")
  ax.set_xlabel("continued-training steps")
  ax.set_ylabel("held-out code bits/byte")
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(png, dpi=120)


def main(argv=None):
  args = parse(sys.argv[1:] if argv is None else argv)
  began = cpu_seconds()
  try:
    workdir = ckpt_lib.absolute(args.workdir)
    if not (workdir / "config.json").is_file():
      raise ConfigError(f"--workdir: {workdir}/config.json not found (not a tessera run)")
    if config_loader.from_json(workdir / "config.json").model.name != "zett":
      raise ConfigError(f"--workdir: {workdir} is not a ZeTT run")
    targets = target_paths(args.tokenizers)
    out_dir = pathlib.Path(args.out_dir) if args.out_dir else workdir / "transfer_eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    store = Store(out_dir / "results.json")
    ev = Evaluator(workdir, args.max_chars)
    zero_shot(ev, store, targets, args.seeds)
    if args.continue_steps > 0:
      continued(ev, store, workdir, targets, out_dir, args.continue_steps)
    if args.ablations:
      ablations(ev, store, workdir, targets, pathlib.Path(args.ablations), args.ablation_steps, args.ablation_config)
  except ConfigError as e:
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 2
  cpu = (store.get("cpu_seconds") or 0.0) + cpu_seconds() - began
  store.put(cpu, "cpu_seconds")
  results = pathlib.Path(args.results)
  write_markdown(store, results, cpu)
  results.with_suffix(".json").write_text(json.dumps(store.data, indent=1, sort_keys=True))  # tests read this
  plot(store, results.with_suffix(".png"))
  print(json.dumps({"results": str(results), "cpu_hours": cpu / 3600, "at": time.strftime("%H:%M")}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
