"""The EHR world-model study of issue 14 (jepa_ehr.md "Results to report") at CPU scale: resumable, one unit a run.

  nice -n 10 .venv/bin/python scripts/ehr_study.py --commit     # run the missing units, then render the page
  .venv/bin/python scripts/ehr_study.py --render-only            # docs/results/jepa_ehr.{md,png} from the JSON alone
  .venv/bin/python scripts/ehr_study.py --list                   # the plan and which units are done

Data: the §6 synthetic set (4,000 subjects, seed 0) generated and prepared once under <runs>/data; the MIMIC-IV demo
(shared/data/mimic-iv-demo-meds, when present) prepared under <runs>/mimic (event tokens) and <runs>/mimic_text
(`--tokenizer text`, §4.3, for the mimic_text_* units). Each unit trains in its own workdir
<runs>/<unit> through the real CLI (configs/ehr_jepa.py, probes at the end), single-threaded XLA; a rerun skips
finished units and resumes an interrupted one from its last checkpoint. A finished unit's probe rows, training
curves and CPU seconds go into docs/results/jepa_ehr_data.json (with --commit also into git; read-modify-write
under an flock on jepa_ehr_data.json.lock, so studies running side by side with --only keep each other's units),
then the page is rendered by scripts/ehr_results.py. Units, in order (main first; later ones are cut when CPU runs out;
SIGTERM stops the running unit after the trainer's save and records the CPU it used):
  main: SFT-only and SFT+JEPA joint, seeds 0-2, alternating; mimic: tiny 200 steps, Δ = 30 d, SFT-only and joint,
  with the event (`codes`) tokenizer and again with the `text` tokenizer (mimic_text_*);
  curriculum: seed 0; ablations (seed 0, joint + one override): λ 0.1, target fut_only_last, cosine loss, Δ 30/365 d.
Scale (project default for 2 cores, set by the measured step): `small` (4 layers, d = 128), context/future 192/64,
batch 16, 500 steps (1.3 CPU-s a step here: the issue's 1,000 steps x 6 runs alone would take 130 CPU-min of the
~90 the study may use); the end-of-run probe skips the EMA-target row (half the probe's forward cost).
"""
import argparse
import fcntl
import json
import os
import pathlib
import resource
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import ehr_results  # noqa: E402

MIMIC = ROOT.parent / "shared" / "data" / "mimic-iv-demo-meds"
SYNTH_SUBJECTS = 4000
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def plan(steps):
  """[(unit, group, description, config variant, overrides)] in run order."""
  units = []
  for seed in (0, 1, 2):
    units.append((f"sft_only_s{seed}", "main", "SFT-only", "sft_only", {"seed": seed}))
    units.append((f"joint_s{seed}", "main", "SFT+JEPA joint", "small", {"seed": seed}))
  for name in ("sft_only", "joint"):
    units.append((f"mimic_{name}_s0", "mimic", "MIMIC-IV demo", "tiny",
                  {"seed": 0, "loss.jepa.weight": 0.0 if name == "sft_only" else 1.0, "data.horizon_days": 30.0,
                   "train.steps": 200}))
  for name in ("sft_only", "joint"):
    units.append((f"mimic_text_{name}_s0", "mimic", "MIMIC-IV demo, text tokenizer", "tiny",
                  {"seed": 0, "loss.jepa.weight": 0.0 if name == "sft_only" else 1.0, "data.horizon_days": 30.0,
                   "train.steps": 200}))
  units.append(("curriculum_s0", "main", "SFT+JEPA curriculum", "small", {"seed": 0, "loss.jepa.schedule": "curriculum"}))
  for name, description, overrides in (
      ("lambda_0.1", "λ = 0.1", {"loss.jepa.weight": 0.1}),
      ("target_fut_only_last", "target fut_only_last", {"loss.jepa.target": "fut_only_last"}),
      ("loss_cosine", "latent loss cosine", {"loss.jepa.loss": "cosine"}),
      ("horizon_30d", "Δ = 30 d", {"data.horizon_days": 30.0}),
      ("horizon_365d", "Δ = 365 d", {"data.horizon_days": 365.0})):
    units.append((f"{name}_s0", "ablation", description, "small", {"seed": 0, **overrides}))
  return [(u, g, d, v, {"train.steps": steps, **o}) for u, g, d, v, o in units]


def cpu_seconds():
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


class Study:
  def __init__(self, a):
    self.a, self.runs = a, (ROOT / a.runs).resolve()
    self.path = ROOT / a.out / ehr_results.DATA_FILE
    self.mine = set()  # units this process finished: the only ones its save may replace on disk
    self.data = json.loads(self.path.read_text()) if self.path.exists() else {"units": {}}
    self.data["plan"] = [{"unit": u, "group": g, "description": d, "variant": v, "overrides": o}
                         for u, g, d, v, o in plan(a.steps)]
    self.data["setup"] = {"cpu": ehr_results.cpu_name(), "threads": "one thread per run (XLA single-threaded, nice 10, on a machine shared with other jobs)",
                          "synthetic_subjects": SYNTH_SUBJECTS, "steps": a.steps}
    self.env = {**os.environ, "XLA_FLAGS": SINGLE_THREAD, "TF_CPP_MIN_LOG_LEVEL": "2",
                "JAX_COMPILATION_CACHE_DIR": str(ROOT / ".jax_cache")}

  def run(self, args, log):
    """The command in a child; on SIGTERM/SIGINT the child gets SIGTERM (the trainer saves, a rerun resumes) and is
    waited for, so its CPU time is counted."""
    print("+", " ".join(args), flush=True)
    with open(log, "a") as f:
      child = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT)
      try:
        code = child.wait()
      except BaseException:
        child.terminate()
        child.wait()
        raise
    if code:
      raise subprocess.CalledProcessError(code, args)

  def prepare(self, name, make_input, *flags):
    out = self.runs / name
    if not (out / "stats.json").exists():
      self.runs.mkdir(parents=True, exist_ok=True)
      meds = make_input()
      self.run(["-m", "tessera.data.prepare_meds", "--input", str(meds), "--out", str(out), *flags],
               self.runs / "prepare.log")
    return out

  def mimic(self, text):
    return self.prepare("mimic_text", lambda: MIMIC, "--tokenizer", "text") if text else self.prepare(
        "mimic", lambda: MIMIC)

  def synthetic(self):
    def write():
      meds = self.runs / "synth_meds"
      if not (meds / "metadata" / "dataset.json").exists():
        self.run(["-m", "tessera.data.meds_synth", "--out", str(meds), "--subjects", str(SYNTH_SUBJECTS)],
                 self.runs / "prepare.log")
      return meds
    return self.prepare("data", write)

  def unit(self, name, group, variant, overrides):
    if name in self.data["units"]:
      return
    if group == "mimic" and not MIMIC.is_dir():
      print(f"skipping {name}: no {MIMIC}")
      return
    data = self.mimic(name.startswith("mimic_text_")) if group == "mimic" else self.synthetic()
    workdir = self.runs / name
    partial = self.runs / f"{name}.cpu.json"  # CPU and wall seconds of attempts a stop cut short
    spent = json.loads(partial.read_text()) if partial.exists() else {"cpu_s": 0.0, "wall_s": 0.0, "attempts": 0}
    resumed = workdir.exists() and not spent["attempts"]  # an earlier attempt whose CPU was not recorded
    began_cpu, began = cpu_seconds(), time.time()
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    try:
      if not (workdir / "summary.json").exists():
        self.run(["-m", "tessera.trainer", "train", "--config", f"configs/ehr_jepa.py:{variant}", "--workdir",
                  str(workdir), f"--config.data.path={data}", "--config.probe.target=False",
                  "--config.train.log_every_steps=10", "--config.checkpoint.every_steps=100", *flags],
                 workdir.parent / f"{name}.log")
      if not (workdir / "probe" / "probe.json").exists():  # stopped during the end-of-run probe
        self.run(["-m", "tessera.losses.ehr_probe_cli", "--workdir", str(workdir)], workdir.parent / f"{name}.log")
    finally:
      spent = {"cpu_s": spent["cpu_s"] + cpu_seconds() - began_cpu, "wall_s": spent["wall_s"] + time.time() - began,
               "attempts": spent["attempts"] + 1}
      partial.write_text(json.dumps(spent) + "\n")
    self.data["units"][name] = {"group": group, **overrides, **ehr_results.unit_record(workdir), **spent,
                                "resumed": resumed}
    self.mine.add(name)
    self.save(f"EHR study: {name} ({spent['cpu_s'] / 60:.1f} CPU-min)")

  def save(self, message):
    """Read-modify-write under a lock: units on disk (another study's) are kept, this process's finished ones
    replace theirs, and after the write every unit is checked to be there."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      disk = json.loads(self.path.read_text()).get("units", {}) if self.path.exists() else {}
      self.data["units"] = {**self.data["units"], **disk, **{u: self.data["units"][u] for u in self.mine}}
      ehr_results.render(self.data, ROOT / self.a.out, self.a.name)
      tmp = self.path.with_suffix(f".tmp{os.getpid()}")
      tmp.write_text(json.dumps(self.data, indent=1) + "\n")
      tmp.replace(self.path)
      lost = set(self.data["units"]) - set(json.loads(self.path.read_text())["units"])
      if lost:
        print(f"warning: {self.path} lost units {sorted(lost)} to a concurrent writer; rerun with --only",
              file=sys.stderr)
      if self.a.commit:
        self.commit(message)

  def commit(self, message):
    paths = [str(self.path), *(str(ROOT / self.a.out / f"{self.a.name}.{ext}") for ext in ("md", "png"))]
    for _ in range(6):
      if subprocess.run(["git", "add", *paths], cwd=ROOT, capture_output=True).returncode == 0 and subprocess.run(
          ["git", "commit", "-q", "-m", message, "--", *paths], cwd=ROOT, capture_output=True).returncode == 0:
        return
      time.sleep(5)  # another session holds the index lock
    print(f"note: could not commit {self.path}; the file is written", file=sys.stderr)


def main(argv=None):
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through Study.run: the child stops cleanly
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--runs", default="runs/ehr_study", help="where the data and unit workdirs go")
  p.add_argument("--out", default="docs/results", help="where the data JSON and the page go")
  p.add_argument("--name", default="jepa_ehr", help="page name (<out>/<name>.md, .png)")
  p.add_argument("--steps", type=int, default=500, help="train.steps of the synthetic units")
  p.add_argument("--commit", action="store_true", help="git-commit the JSON and page after each finished unit")
  p.add_argument("--render-only", action="store_true", help="only render the page from the committed JSON")
  p.add_argument("--list", action="store_true", help="print the plan and what is done")
  p.add_argument("--only", default="", help="comma-separated unit names to run (default: every unit in order)")
  a = p.parse_args(argv)
  study = Study(a)
  if a.list:
    for unit, group, description, _, overrides in plan(a.steps):
      done = study.data["units"].get(unit)
      print(f"{unit:24s} {group:9s} {description:24s} " +
            (f"done, {done['cpu_s'] / 60:.1f} CPU-min" if done else "to run") + f"  {overrides}")
    return 0
  if not a.render_only:
    wanted = set(a.only.split(",")) - {""}
    for unit, group, _, variant, overrides in plan(a.steps):
      if not wanted or unit in wanted:
        study.unit(unit, group, variant, overrides)
  study.save("EHR study: page")
  return 0


if __name__ == "__main__":
  sys.exit(main())
