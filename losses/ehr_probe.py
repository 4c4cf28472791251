"""Trajectory linear probes for EHR world models (jepa_ehr.md §7, issue 14): the end-of-run hook of "ehr_jepa" and
the body of scripts/probe.

Embedding = the online encoder's final-norm hidden state at the last token with time <= the node (a context-only
forward, left-truncated to ctx_len like a cut-point context), fp32, z-scored with training statistics; the EMA
target's embedding is a secondary row, a last-value feature (the decile bin of the last LAB//A) the baseline row.
Protocol: when train/tuning/held_out all hold both classes (the synthetic set), fit on train, pick C on tuning,
test on held_out; otherwise (MIMIC-style) stratified subject-grouped 5-fold CV with an inner 80/20 split for C and
AUROC on the pooled out-of-fold predictions. 95% CIs from subject-level bootstrap resamples of the test rows.
Prints one line per (task, node) of the online encoder:
  task=long_term_slope node=1.0y auroc=0.712 auroc_lo=0.65 auroc_hi=0.77 auprc=0.60 n=812
and writes <out>/probe.json, probe.md and probe.png.
"""
import json
import pathlib
import sys

import jax
import numpy as np
import pyarrow.parquet as pq
from flax import nnx

from tessera.losses import linear_probe

SYNTH_NODES = ("0.5y", "1.0y", "1.5y")  # tessera.data.meds_synth.NODE_YEARS, in order per subject
SYNTH_TASKS = ("short_term", "long_term_slope", "death_1y")
MIMIC_NODES = {"in_hospital_mortality": "adm+24h", "icu_admission": "adm+24h", "long_length_of_stay": "adm+24h",
               "readmission_30d": "discharge", "mortality_1y": "discharge"}
LAST_VALUE_CODE = "LAB//A"
MIN_SPLIT_ROWS = 20


def note(message):
  print(f"probe: {message}", file=sys.stderr, flush=True)


def objective_name(config):
  if config.model.name != "ehr_world" or config.loss.name != "ehr_jepa":
    return "sft_only (no JEPA state)"
  jepa = config.loss.jepa
  return "sft_only" if jepa.weight == 0 else f"sft+jepa_{jepa.schedule}"


def read_tasks(labels_dir, wanted, known_subjects):
  """{task: (subject_id [N], time_us [N], label [N] bool, node [N] str)} from labels/*.parquet."""
  tasks = {}
  for path in sorted(pathlib.Path(labels_dir).glob("*.parquet")):
    if wanted != "all" and path.stem not in wanted.split(","):
      continue
    table = pq.read_table(path, columns=["subject_id", "prediction_time", "boolean_value"])
    subject = table.column("subject_id").to_numpy().astype(np.int64)
    time_us = table.column("prediction_time").cast("int64").to_numpy()
    label = table.column("boolean_value").to_numpy(zero_copy_only=False).astype(bool)
    known = np.isin(subject, list(known_subjects))
    if not known.all():
      note(f"task {path.stem}: {int((~known).sum())} label rows of subjects not in the prepared data left out")
    subject, time_us, label = subject[known], time_us[known], label[known]
    order = np.lexsort((time_us, subject))
    subject, time_us, label = subject[order], time_us[order], label[order]
    if path.stem in SYNTH_TASKS:
      rank = np.arange(len(subject)) - np.searchsorted(subject, subject)
      node = np.asarray([SYNTH_NODES[r] if r < len(SYNTH_NODES) else f"#{r}" for r in rank])
    else:
      node = np.full(len(subject), MIMIC_NODES.get(path.stem, "all"))
    tasks[path.stem] = (subject, time_us, label, node)
  return tasks


LENGTH_BUCKET = 64


def embed(model, windows, keys, batch, ctx_len, with_target=True):
  """{(subject, time): (online z [D], target z [D] or None, last LAB//A bin or -1)} for every key. Windows run
  sorted by length, each batch cut to a multiple of LENGTH_BUCKET tokens: causal attention makes the state at
  `last` independent of the pad after it, and the forward is the probe's main cost (early nodes are short)."""
  from tessera.models import ehr_world

  has_target = hasattr(model, "target") and with_target
  tok = windows.tokenizer
  code_id, q_first = tok.id_of.get(LAST_VALUE_CODE), tok.q_first

  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, tokens_BxT, last_B):
    model = nnx.merge(graphdef, state)
    h_BxTxD, _ = ehr_world.hidden_states(model, tokens_BxT)
    z = h_BxTxD[np.arange(tokens_BxT.shape[0]), last_B]
    if has_target:
      ht_BxTxD, _ = ehr_world.hidden_states(model.target, tokens_BxT)
      return z, ht_BxTxD[np.arange(tokens_BxT.shape[0]), last_B]
    return z, z

  out, rows = {}, []
  for key in keys:
    found = windows.window(*key)
    if found is None:
      continue
    row, last, context = found
    value_bin = -1
    if code_id is not None:
      at = np.flatnonzero(context[:-1] == code_id)
      at = at[(context[at + 1] >= q_first) & (context[at + 1] < q_first + 10)] if len(at) else at
      value_bin = int(context[at[-1] + 1] - q_first) if len(at) else -1
    rows.append((key, row, last, value_bin))
  rows.sort(key=lambda r: r[2])
  for start in range(0, len(rows), batch):
    chunk = rows[start:start + batch]
    length = min(ctx_len, -(-(chunk[-1][2] + 1) // LENGTH_BUCKET) * LENGTH_BUCKET)
    tokens = np.full((batch, length), windows.pad_id, np.int32)
    last = np.zeros(batch, np.int32)
    for i, (_, row, idx, _) in enumerate(chunk):
      tokens[i], last[i] = row[:length], idx
    z, zt = jax.device_get(forward(state, tokens, last))
    for i, (key, _, _, value_bin) in enumerate(chunk):
      out[key] = (np.asarray(z[i], np.float32), np.asarray(zt[i], np.float32) if has_target else None, value_bin)
  return out


def evaluate(x_NxD, y_N, subject_N, split_N, cfg_probe, seed):
  """(metrics dict or None with a reason) under the protocol the rows allow."""
  if y_N.sum() < 2:
    return None, f"fewer than 2 positives ({int(y_N.sum())})"
  if (~y_N).sum() < 2:
    return None, f"fewer than 2 negatives ({int((~y_N).sum())})"
  masks = {s: split_N == s for s in ("train", "tuning", "held_out")}
  per_split_ok = all(y_N[m].sum() >= 2 and (~y_N[m]).sum() >= 2 for m in masks.values())
  if per_split_ok and masks["held_out"].sum() >= MIN_SPLIT_ROWS:
    x_tr, x_val, x_te = linear_probe.zscore(x_NxD[masks["train"]], x_NxD[masks["tuning"]], x_NxD[masks["held_out"]])
    theta, c = linear_probe.select_and_fit(x_tr, y_N[masks["train"]], x_val, y_N[masks["tuning"]],
                                           iterations=cfg_probe.iterations)
    y_te, s_te, g_te, protocol = y_N[masks["held_out"]], linear_probe.scores(theta, x_te), subject_N[
        masks["held_out"]], "train/tuning/held_out"
  else:
    folds = linear_probe.grouped_folds(y_N, subject_N, 5, seed)
    s_te, cs = np.zeros(len(y_N)), []
    for k in range(5):
      test, train = folds == k, folds != k
      if not test.any():
        continue
      inner = linear_probe.grouped_folds(y_N[train], subject_N[train], 5, seed + 1) == 0
      x_tr, x_in, x_val, x_test = linear_probe.zscore(x_NxD[train], x_NxD[train][~inner], x_NxD[train][inner],
                                                      x_NxD[test])
      _, c = linear_probe.select_and_fit(x_in, y_N[train][~inner], x_val, y_N[train][inner],
                                         iterations=cfg_probe.iterations)
      theta = linear_probe.fit_logistic(x_tr, y_N[train], iterations=cfg_probe.iterations)[linear_probe.CS.index(c)]
      s_te[test] = linear_probe.scores(theta, x_test)
      cs.append(c)
    y_te, g_te, protocol, c = y_N, subject_N, "5-fold grouped CV (pooled)", float(np.median(cs))
  auc = linear_probe.auroc(y_te, s_te)
  if np.isnan(auc):
    return None, "a single-class test set"
  lo, hi = linear_probe.bootstrap_ci(y_te, s_te, g_te, cfg_probe.bootstrap, seed)
  if np.isnan(lo) or np.isnan(hi):
    return None, "every bootstrap resample of the test subjects was single-class"
  return {"auroc": auc, "auroc_lo": lo, "auroc_hi": hi, "auprc": linear_probe.auprc(y_te, s_te), "n": int(len(y_te)),
          "positives": int(y_te.sum()), "protocol": protocol, "C": c}, None


def run(config, model, windows, out_dir, tasks="all", step=None, write_files=True, others=()):
  """Probes every (task, node) on `model`'s embeddings; prints the lines, writes probe.json/md/png under out_dir."""
  cfg_probe = config.probe
  labels = read_tasks(windows.directory / "labels", tasks, windows.record_of)
  if not labels:
    note(f"no label files in {windows.directory / 'labels'}; nothing to probe")
    return {}
  keys = sorted({(int(s), int(t)) for subject, time_us, _, _ in labels.values()
                 for s, t in zip(subject, time_us)})
  embeddings = embed(model, windows, keys, cfg_probe.batch, windows.ctx_len, cfg_probe.get("target", True))
  objective = objective_name(config)
  results = []
  for task, (subject, time_us, label, node) in labels.items():
    for node_name in dict.fromkeys(node.tolist()):
      pick = [i for i in np.flatnonzero(node == node_name) if (int(subject[i]), int(time_us[i])) in embeddings]
      if not pick:
        continue
      rows = [embeddings[(int(subject[i]), int(time_us[i]))] for i in pick]
      y, g = label[pick], subject[pick]
      split = np.asarray([windows.split_of(int(s)) for s in g])
      features = {"online": np.stack([r[0] for r in rows])}
      if rows[0][1] is not None:
        features["target"] = np.stack([r[1] for r in rows])
      value_bins = np.asarray([r[2] for r in rows], np.float32)
      if (value_bins >= 0).any():
        features["last_value"] = np.stack([np.maximum(value_bins, 0), (value_bins < 0).astype(np.float32)], 1)
      for encoder, x in features.items():
        metrics, reason = evaluate(x, y, g, split, cfg_probe, config.seed)
        if metrics is None:
          if encoder == "online":
            note(f"task={task} node={node_name}: skipped, {reason}")
          continue
        results.append({"task": task, "node": node_name, "encoder": encoder, **metrics})
        if encoder == "online":
          print(f"task={task} node={node_name} auroc={metrics['auroc']:.3f} auroc_lo={metrics['auroc_lo']:.2f} "
                f"auroc_hi={metrics['auroc_hi']:.2f} auprc={metrics['auprc']:.2f} n={metrics['n']}", flush=True)
  report = {"objective": objective, "step": step, "ctx_len": windows.ctx_len, "data": str(windows.directory),
            "bootstrap": cfg_probe.bootstrap, "results": results}
  if write_files:
    write(report, pathlib.Path(out_dir), others)
  return {f"probe/{r['task']}/{r['node']}/auroc": r["auroc"] for r in results if r["encoder"] == "online"}


def write(report, out_dir, others=()):
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
  lines = [f"# Linear probes: {report['objective']} (step {report['step']})", "",
           f"Data `{report['data']}`; 95% CIs from {report['bootstrap']} subject-level bootstrap resamples.", "",
           "| task | node | encoder | AUROC [95% CI] | AUPRC | n (pos) | protocol | C |",
           "|---|---|---|---|---|---|---|---|"]
  for r in report["results"]:
    lines.append(f"| {r['task']} | {r['node']} | {r['encoder']} | {r['auroc']:.3f} [{r['auroc_lo']:.2f}, "
                 f"{r['auroc_hi']:.2f}] | {r['auprc']:.3f} | {r['n']} ({r['positives']}) | {r['protocol']} | "
                 f"{r['C']:g} |")
  (out_dir / "probe.md").write_text("\n".join(lines) + "\n")
  plot(report, out_dir / "probe.png", others)


def plot(report, path, others=()):
  """AUROC vs decision node, one panel per task, one line per encoder (online = the run's objective); `others`:
  reports of other runs (scripts/probe --compare) whose online rows are drawn too (one line per objective)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tasks = list(dict.fromkeys(r["task"] for r in report["results"]))
  if not tasks:
    return
  fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    for encoder in ("online", "target", "last_value"):
      rows = [r for r in report["results"] if r["task"] == task and r["encoder"] == encoder]
      if not rows:
        continue
      label = report["objective"] if encoder == "online" else f"{report['objective']} ({encoder})" \
          if encoder == "target" else "last LAB//A value"
      ax.errorbar([r["node"] for r in rows], [r["auroc"] for r in rows],
                  yerr=[[r["auroc"] - r["auroc_lo"] for r in rows], [r["auroc_hi"] - r["auroc"] for r in rows]],
                  marker="o", capsize=3, label=label)
    for other in others:
      rows = [r for r in other["results"] if r["task"] == task and r["encoder"] == "online"]
      if rows:
        ax.plot([r["node"] for r in rows], [r["auroc"] for r in rows], marker="s", ls="--",
                label=f"{other['objective']} (step {other['step']})")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set(title=task, xlabel="decision node", ylabel="AUROC")
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def end_of_run(config, model, pipeline, workdir):
  """The objective's end-of-run hook: probes into <workdir>/probe (process 0 writes; every process computes)."""
  return run(config, model, pipeline.node_windows(), pathlib.Path(workdir) / "probe", config.probe.tasks,
             step=config.train.steps, write_files=jax.process_index() == 0)
