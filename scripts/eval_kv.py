"""`scripts/eval_kv --workdir runs/trimkv --budgets 8,16,32,64` (issue 12; shared/specs/trimkv.md §9, "Results").

Hard-eviction evaluation of a run trained on the `synthetic_recall` data: for the full cache and each policy
(trimkv, sink_window = StreamingLLM with 4 sinks, window, h2o, random) at each budget M (buffer M // 2, §9's
16 + 8), every held-out row is streamed through the cache one token at a time (generate.stream_logits: the
prediction at t sees only what the policy kept), and it reports
  recall   accuracy of the greedy answer at each query's value position (recall rows),
  copy     accuracy of the greedy next token over the copied span (copy rows, teacher-forced),
  ppl      streaming perplexity on held-out corpus text (text rows),
  kl       mean KL(p_full || p_policy) over every position of the three row sets.
With retention gates it also records the mean beta of the needed tokens (stored key/value pairs, span) vs the
filler text, per (layer, KV head), and log beta over one sample recall row (the results page's heat map).
Writes --out (default <workdir>/eval_kv.json) and prints a table. Exit 2 with one line for bad input.
"""
import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tessera.models import generate
from tessera.models import kv_cache
from tessera.trainer import inspect_run
from tessera.trainer import workdir as workdir_lib
from tessera.trainer.config_loader import ConfigError

POLICIES = ("trimkv", "sink_window", "window", "h2o", "random")
SINKS = 4  # StreamingLLM's attention sinks (issue 12: "StreamingLLM = 4 sinks + window")
TASKS = ("recall", "copy", "text")


def parse_args(argv):
  p = argparse.ArgumentParser(prog="scripts/eval_kv", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a run trained on data.name=synthetic_recall")
  p.add_argument("--budgets", default="8,16,32,64", help="comma-separated budgets M (entries per layer and KV head)")
  p.add_argument("--policies", help=f"comma-separated cache policies (default: {','.join(POLICIES)}; trimkv only "
                 "where the model has retention gates)")
  p.add_argument("--sequences", type=int, default=64, help="held-out rows per task (default: %(default)s)")
  p.add_argument("--seed", type=int, default=0, help="the random policy's seed (default: %(default)s)")
  p.add_argument("--data-seed", type=int, default=0, help="seed of the held-out rows (default: %(default)s)")
  p.add_argument("--out", help="JSON output (default <workdir>/eval_kv.json)")
  return p.parse_args(argv)


def _budgets(text):
  try:
    budgets = sorted({int(b) for b in text.split(",")})
  except ValueError:
    raise ConfigError(f"--budgets: {text!r} is not a comma-separated list of ints") from None
  if budgets[0] <= SINKS:
    raise ConfigError(f"--budgets: M={budgets[0]} must exceed the {SINKS} sink tokens of sink_window")
  return budgets


def policy(name, budget, seed):
  return kv_cache.Policy(name, budget=budget, buffer=max(1, budget // 2), sinks=SINKS if name == "sink_window" else 0,
                         seed=seed)


def _rows(pipeline, sequences, data_seed):
  """One batch of held-out rows: recall, copy and text (in that order) with their per-task masks; drawn with
  `data_seed` (not the run's seed), so runs of different seeds are scored on the same rows."""
  parts = [pipeline.examples(task, sequences, seed=data_seed) for task in TASKS]
  fields = {k: np.concatenate([f[k] for f, _, _ in parts]) for k in parts[0][0]}
  answers = np.concatenate([a for _, a, _ in parts])
  needed = np.concatenate([n for _, _, n in parts])
  task = np.repeat(np.arange(len(TASKS)), sequences)
  return fields, answers, needed, task


def _scores(logits_BxTxV, full_BxTxV, fields, answers, task):
  """recall / copy accuracy, text perplexity and KL to the full cache (see the module docstring)."""
  logits = np.asarray(logits_BxTxV, np.float32)
  hit = logits.argmax(-1) == fields["targets"]
  out = {}
  for i, name in enumerate(TASKS[:2]):
    mask = answers & (task == i)[:, None]
    out[name] = float(hit[mask].mean())
  log_p = jax.nn.log_softmax(jnp.asarray(logits), -1)
  text = (task == 2)[:, None] & (fields["loss_mask"] > 0)
  nll = -np.take_along_axis(np.asarray(log_p), fields["targets"][..., None], -1)[..., 0]
  out["ppl"] = float(np.exp(nll[text].mean()))
  if full_BxTxV is not None:
    log_q = jax.nn.log_softmax(jnp.asarray(full_BxTxV, jnp.float32), -1)
    kl_BxT = np.asarray(jnp.sum(jnp.exp(log_q) * (log_q - log_p), -1))
    out["kl"] = float(kl_BxT[fields["loss_mask"] > 0].mean())
  return out


def gate_diagnostics(model, fields, needed, task):
  """Mean beta of needed tokens vs filler bytes (task rows), per (layer, KV head) and overall; log beta of the
  first recall row for the heat map."""
  graphdef, state = nnx.split(model)
  log_beta_LxBxKxT = np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s).log_beta(t))(
      state, jnp.asarray(fields["inputs"])))
  beta_LxKxBxT = np.exp(log_beta_LxBxKxT).transpose(0, 2, 1, 3)
  task_rows = (task < 2)[:, None]
  filler = task_rows & ~needed & (fields["inputs"] < 256)
  needed = task_rows & needed
  return {"needed": float(beta_LxKxBxT[:, :, needed].mean()), "filler": float(beta_LxKxBxT[:, :, filler].mean()),
          "needed_LxK": beta_LxKxBxT[:, :, needed].mean(-1).round(5).tolist(),
          "filler_LxK": beta_LxKxBxT[:, :, filler].mean(-1).round(5).tolist(),
          "sample_tokens": fields["inputs"][0].tolist(), "sample_needed": needed[0].astype(int).tolist(),
          "sample_log_beta_LxKxT": log_beta_LxBxKxT[:, 0].round(4).tolist()}


def evaluate(model, pipeline, budgets, names, sequences, seed, log=print, data_seed=0):
  fields, answers, needed, task = _rows(pipeline, sequences, data_seed)
  tokens = jnp.asarray(fields["inputs"])
  full = np.asarray(generate.stream_logits(model, tokens, kv_cache.Policy()))
  result = {"sequences": sequences, "budgets": budgets, "sinks": SINKS, "full": _scores(full, None, fields, answers,
                                                                                        task), "policies": {}}
  log(f"full: {result['full']}")
  for name in names:
    result["policies"][name] = {}
    for budget in budgets:
      logits = generate.stream_logits(model, tokens, policy(name, budget, seed))
      result["policies"][name][str(budget)] = _scores(logits, full, fields, answers, task)
      log(f"{name} M={budget}: {result['policies'][name][str(budget)]}")
  if hasattr(model, "log_beta"):
    result["beta"] = gate_diagnostics(model, fields, needed, task)
  return result


def table(result):
  lines = [f"{'policy':12s} {'M':>4s} {'recall':>7s} {'copy':>7s} {'ppl':>8s} {'kl':>7s}"]
  f = result["full"]
  lines.append(f"{'full':12s} {'-':>4s} {f['recall']:7.3f} {f['copy']:7.3f} {f['ppl']:8.3f} {0:7.3f}")
  for name, per_budget in result["policies"].items():
    for budget, s in per_budget.items():
      lines.append(f"{name:12s} {budget:>4s} {s['recall']:7.3f} {s['copy']:7.3f} {s['ppl']:8.3f} {s['kl']:7.3f}")
  return "\n".join(lines)


def run(args):
  budgets = _budgets(args.budgets)
  if args.sequences < 1:
    raise ConfigError(f"--sequences: must be >= 1 (got {args.sequences})")
  workdir = pathlib.Path(args.workdir)
  config, factory, params, step, pipeline = inspect_run.load(workdir)
  if not hasattr(pipeline, "examples"):
    raise ConfigError(f"--workdir: {workdir} trained on data.name={config.data.name!r}; eval_kv needs the "
                      "synthetic_recall tasks (configs/trimkv.py)")
  start = time.process_time()
  with factory.context():
    model = factory.model(params)
    names = args.policies.split(",") if args.policies else [
        n for n in POLICIES if n != "trimkv" or getattr(model, "writes_token_scores", False)]
    for name in names:
      if name not in kv_cache.names() or name == "full":
        raise ConfigError(f"--policies: unknown or unbounded policy {name!r}; known: "
                          f"{', '.join(n for n in kv_cache.names() if n != 'full')}")
      try:
        kv_cache.check_model(policy(name, budgets[0], 0), model)
      except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    result = evaluate(model, pipeline, budgets, names, args.sequences, args.seed,
                      log=lambda s: print(s, file=sys.stderr, flush=True), data_seed=args.data_seed)
  result.update(workdir=str(workdir), step=step, seed=args.seed, data_seed=args.data_seed,
                cpu_seconds=round(time.process_time() - start, 1))
  out = pathlib.Path(args.out) if args.out else workdir / "eval_kv.json"
  workdir_lib.write_json(out, result)
  print(table(result))
  print(f"wrote {out} ({result['cpu_seconds']} CPU s)", file=sys.stderr)
  return result


def main(argv=None):
  try:
    run(parse_args(argv))
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
