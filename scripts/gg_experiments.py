"""GG-prior experiments at CPU scale: runs, committed data and docs/results/gg_prior.md, all from this one script.

  scripts/gg_experiments.py --commit            # run the missing units (resumable), then render the page
  scripts/gg_experiments.py --render-only       # page + plots from docs/results/gg_prior_data.json alone

Every run is `configs/lm.py:tiny` (147,776 params) for 150 steps of 8 x 64 tokens through the real CLIs. Per seed
(the seed sets init and data order, so the arms of one seed see identical batches), in this order:
  (1) init: GG ν = 0.5, 1, 1.5, 2 (ξ = 2, n = output size / V; ν = 2 is the Gaussian of equal variance);
  (2) BackSlash λ = 0.25x, 1x, 4x the default 2e3·N/1.24e8 from the ν = 2 init (λ = 0: the ν = 2 run of (1)), and
      the L1 proximal baseline (`regularizer.backslash.nu=1`) whose λ matches the average shrink λν̂/N of the 4x run;
  (3) DeepShape on the BackSlash 4x model, then a 15-step (10%) recovery fine-tune;
  (4) weight formats bf16 / RF8 / E4M3 / E5M2 on the λ = 0 model and on the BackSlash 4x + DeepShape model.
Parts run in this order, each at every seed before the next part starts.
A unit's numbers go into <out>/gg_prior_data.json as soon as it finishes (with --commit also into git); a rerun
skips finished units. Units never run are listed on the page with the reason.
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

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_FILE = "gg_prior_data.json"
CONFIG = "configs/lm.py:tiny"
INITS = {"gg_nu0.5": 0.5, "gg_nu1": 1.0, "gg_nu1.5": 1.5, "gg_nu2": 2.0}
BASE_INIT = "gg_nu2"  # the Gaussian model that BackSlash, DeepShape and the formats start from / are applied to
LAM_MULTIPLES = (0.25, 1, 4)
L1_MATCHES = 4  # the L1 baseline matches the average shrink of this BackSlash multiple
FORMATS = ("bf16", "rf8", "e4m3", "e5m2")
DEEPSHAPE_SOURCE = "backslash_x4"
QUANT_MODELS = {"baseline": BASE_INIT, "backslash_deepshape": "deepshape_ft"}  # page name: run name
SUMMARY_KEYS = ("eval_loss", "nu_hat", "beta_hat", "entropy_bits", "expgolomb_bits", "sparsity")


class Runner:
  """Runs the CLIs, records commands and child CPU seconds, and stores each finished unit."""

  def __init__(self, a):
    self.a, self.runs = a, ROOT / a.runs
    self.path = ROOT / a.out / DATA_FILE
    self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
    if "units" not in self.data:  # none yet (or the pre-issue-16 layout: its runs are not reused)
      self.data = {"units": {}, "commands": []}

  def cli(self, args):
    cmd = " ".join(args)
    print("+", cmd, flush=True)
    module = [] if args[0].endswith(".py") else ["-m"]
    subprocess.run([sys.executable, *module, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    self.data["commands"].append(cmd)

  def unit(self, key, make):
    """make() -> dict; stored under key with its CPU and wall seconds, unless key is already there."""
    if key in self.data["units"]:
      return self.data["units"][key]
    cpu0, wall0 = cpu_seconds(), time.time()
    value = make()
    value.update(cpu_s=cpu_seconds() - cpu0, wall_s=time.time() - wall0)
    self.data["units"][key] = value
    self.save(f"gg results: {key}")
    return value

  def save(self, message):
    tmp = self.path.with_suffix(".tmp")
    tmp.write_text(json.dumps(self.data, indent=1) + "\n")
    tmp.replace(self.path)
    if self.a.commit:
      for _ in range(5):
        ok = subprocess.run(["git", "add", str(self.path)], cwd=ROOT, capture_output=True).returncode == 0 and \
            subprocess.run(["git", "commit", "-q", "-m", message, "--", str(self.path)], cwd=ROOT,
                           capture_output=True).returncode == 0
        if ok:
          return
        time.sleep(5)  # another commit holds the index lock
      print(f"note: could not commit {self.path}; the file is written", file=sys.stderr)

  def train(self, name, seed, overrides, steps=None, init_from=None):
    workdir = self.runs / f"{name}_s{seed}"
    steps = steps or self.a.steps
    if not (workdir / "summary.json").exists():
      self.cli(["tessera.trainer", "train", "--config", CONFIG, "--workdir", str(workdir), f"--config.seed={seed}",
                f"--config.train.steps={steps}", f"--config.eval.every_steps={max(steps // 10, 1)}",
                f"--config.eval.batches={self.a.eval_batches}", f"--config.checkpoint.every_steps={steps}",
                "--config.regularizer.weight_stats=True", "--config.sample.max_new_tokens=1",
                *(["--init-from", str(init_from)] if init_from else []), *overrides])
    summary = json.loads((workdir / "summary.json").read_text())
    return {"workdir": os.path.relpath(workdir, ROOT), "eval_curve": metric(workdir, "eval/loss"),
            **{k: summary[k] for k in SUMMARY_KEYS}}

  def transform(self, command, source, out, extra):
    if not (out / "summary.json").exists():
      self.cli(["scripts/transform_run.py", command, "--workdir", str(source), "--out", str(out), *extra])
    return json.loads((out / "summary.json").read_text())


def cpu_seconds():
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  s = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime + s.ru_utime + s.ru_stime


def metric(workdir, tag):
  from tessera.trainer import metrics
  return {str(r["step"]): r[tag] for r in metrics.read_metrics(workdir) if tag in r}


def default_lam():
  from tessera.losses import backslash
  return backslash.default_lam(147776)


def bf16_unit(source):
  """bf16 storage of the float weights (every >= 2-D weight rounded to bfloat16, as the 8-bit formats quantize
  only those): relative RMSE and the eval loss of the rounded weights (in-process, the run's own eval batches)."""
  sys.path.insert(0, str(ROOT / "scripts"))
  import jax
  import jax.numpy as jnp
  import transform_run
  from tessera.models import quantized
  from tessera.trainer import inspect_run, loop
  config, factory, params, _ = transform_run.load_source(source)
  pipeline = loop.build_pipeline(config, source)

  def rounded(w):
    return w.astype(jnp.bfloat16).astype(w.dtype) if quantized.quantizable(w) else w

  def loss(p):
    trained, frozen = factory.split_params(p)
    return inspect_run.evaluate_variables(config, factory, {"params": trained, "frozen": frozen, "model_state": {}},
                                          pipeline)["eval_loss"]

  host = jax.device_get(params)
  err = [np.asarray(w, np.float64) - np.asarray(rounded(jnp.asarray(w)), np.float64)
         for w in jax.tree.leaves(host) if quantized.quantizable(w)]
  ref = [np.asarray(w, np.float64) for w in jax.tree.leaves(host) if quantized.quantizable(w)]
  source_loss, bf16_loss = loss(params), loss(jax.tree.map(rounded, params))
  return {"relative_rmse": float(np.sqrt(sum((e ** 2).sum() for e in err) / sum((r ** 2).sum() for r in ref))),
          "source_eval_loss": source_loss, "eval_loss": bf16_loss, "eval_loss_change": bf16_loss - source_loss}


def base_overrides():
  return ["--config.model.init=gg", f"--config.model.gg.shape={INITS[BASE_INIT]}"]


def run_init(r, seed):
  for name, nu in INITS.items():
    overrides = [] if nu is None else ["--config.model.init=gg", f"--config.model.gg.shape={nu}"]
    r.unit(f"init/{name}/s{seed}", lambda: r.train(name, seed, overrides))


def run_backslash(r, seed):
  lam = default_lam()
  backslash = [*base_overrides(), "--config.regularizer.backslash.enabled=True"]
  for m in LAM_MULTIPLES:
    name = f"backslash_x{m:g}"
    bs = r.unit(f"backslash/x{m:g}/s{seed}", lambda: {
        **r.train(name, seed, [*backslash, f"--config.regularizer.backslash.lam={lam * m}"]),
        "lam": lam * m, "mean_nu_hat_active": mean_active_nu(r.runs / f"{name}_s{seed}")})
    if m == L1_MATCHES:
      l1_lam = lam * m * bs["mean_nu_hat_active"]  # same average per-weight push λν̂/N, with ν̂ forced to 1
      r.unit(f"l1/s{seed}", lambda: {**r.train("l1", seed, [*backslash, f"--config.regularizer.backslash.lam={l1_lam}",
                                                            "--config.regularizer.backslash.nu=1.0"]),
                                     "lam": l1_lam})


def run_deepshape(r, seed):
  """DeepShape on the BackSlash model (the paper's order: rate-constrained training, then the remap), then a
  recovery fine-tune of 10% of the steps with BackSlash off."""
  ds_dir = r.runs / f"deepshape_s{seed}"
  r.unit(f"deepshape/s{seed}", lambda: r.transform("deepshape", r.runs / f"{DEEPSHAPE_SOURCE}_s{seed}", ds_dir, []))
  r.unit(f"deepshape_ft/s{seed}", lambda: r.train("deepshape_ft", seed, base_overrides(), steps=r.a.steps // 10,
                                                  init_from=ds_dir))


def run_formats(r, seed):
  for model, run_name in QUANT_MODELS.items():
    source = r.runs / f"{run_name}_s{seed}"
    for fmt in FORMATS:
      out = r.runs / f"{source.name}_{fmt}"
      r.unit(f"quant/{model}/{fmt}/s{seed}", lambda: bf16_unit(source) if fmt == "bf16" else {
          k: v for k, v in r.transform("quantize", source, out, ["--format", fmt]).items()
          if k in ("relative_rmse", "source_eval_loss", "eval_loss", "eval_loss_change", "size_ratio")})


PARTS = (run_init, run_backslash, run_deepshape, run_formats)  # part-major: a cut leaves whole parts at all seeds


def mean_active_nu(workdir):
  nu = metric(workdir, "train/backslash/nu_hat")
  active = metric(workdir, "train/backslash/active")
  return float(np.mean([v for s, v in nu.items() if active.get(s) == 1.0]))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--runs", default="runs/gg_experiments", help="run directories (default: %(default)s)")
  p.add_argument("--out", default="docs/results", help="data, page and plots (default: %(default)s)")
  p.add_argument("--steps", type=int, default=150, help="train steps per run (default: %(default)s)")
  p.add_argument("--eval-batches", type=int, default=16, help="eval batches of 8 x 64 tokens (default: %(default)s)")
  p.add_argument("--seeds", type=int, default=3, help="seeds (default: %(default)s)")
  p.add_argument("--commit", action="store_true", help="git-commit the data file after each finished unit")
  p.add_argument("--render-only", action="store_true", help="only write the page and plots from the data file")
  a = p.parse_args()
  (ROOT / a.out).mkdir(parents=True, exist_ok=True)
  r = Runner(a)
  if not a.render_only:
    r.data["setup"] = {"config": CONFIG, "steps": a.steps, "seeds": a.seeds, "eval_batches": a.eval_batches,
                       "tokens_per_step": 8 * 64, "default_lam": default_lam(),
                       "cpu": "2 cores of an Intel Xeon (Sapphire Rapids class), shared with other jobs",
                       "xla_flags": os.environ.get("XLA_FLAGS", "")}
    for part in PARTS:
      for seed in range(a.seeds):
        part(r, seed)


if __name__ == "__main__":
  main()
