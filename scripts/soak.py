"""Kill a training run at random moments, resume it each time, and compare it with an uninterrupted run.

  scripts/soak --kills 20 [--steps 200] [--every-steps 4] [--seed 0] [--json soak.json] [--keep DIR]

Each kill is SIGKILL or SIGTERM (a coin flip), at one of two kinds of moment (another coin flip): while an async
checkpoint write is in flight (an Orbax `<step>.orbax-checkpoint-tmp-*` folder exists), or after a random time
since launch. After the kills the run is resumed to the end. Reported as JSON (the last stdout line):
final_params_bitwise (every array of the final state, byte for byte, vs the uninterrupted run), per-step
loss completeness and equality from metrics.jsonl, and how many checkpoints were found corrupt (moved aside or
reported). Exit 0 when all three hold, 1 otherwise.
"""
import argparse
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse(argv):
  p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.splitlines()[0])
  p.add_argument("--kills", type=int, default=20, help="interruptions (SIGKILL or SIGTERM) before the run finishes")
  p.add_argument("--steps", type=int, default=200, help="train.steps of the soaked run")
  p.add_argument("--every-steps", type=int, default=4, dest="every_steps", help="checkpoint.every_steps")
  p.add_argument("--config", default="configs/lm.py:tiny", help="config of the soaked run")
  p.add_argument("--seed", type=int, default=0, help="seeds the kill moments (the training seed stays the config's)")
  p.add_argument("--json", help="also write the report here")
  p.add_argument("--keep", help="run in this folder and keep it (default: a temporary folder)")
  args = p.parse_args(argv)
  if args.kills < 0 or args.steps < 1 or args.every_steps < 1:
    p.error("--kills must be >= 0, --steps and --every-steps >= 1")
  return args


def command(args, workdir):
  return [sys.executable, "-m", "tessera.trainer", "--config", args.config, "--workdir", str(workdir),
          f"--config.train.steps={args.steps}", f"--config.checkpoint.every_steps={args.every_steps}",
          "--config.checkpoint.every_seconds=0.0", "--config.checkpoint.max_to_keep=2",
          f"--config.eval.every_steps={args.steps}", "--config.eval.batches=1", "--config.sample.max_new_tokens=0"]


class Launch:
  """One run of the trainer; its output goes to the log, and `started` is set once its train loop begins."""

  def __init__(self, args, workdir, log):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    self.proc = subprocess.Popen(command(args, workdir), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    self.began, self.started, self.lines = time.perf_counter(), None, []
    self.reader = threading.Thread(target=self._read, args=(log,), daemon=True)
    self.reader.start()

  def _read(self, log):
    for line in self.proc.stdout:
      log.write(line)
      self.lines.append(line)
      if self.started is None and " devices, mesh " in line:  # logged right before the first step
        self.started = time.perf_counter()

  def wait(self):
    code = self.proc.wait()
    self.reader.join()
    return code


def tmp_dirs(workdir):
  try:
    return {p.name for p in (workdir / "checkpoints").iterdir() if ".orbax-checkpoint-tmp" in p.name}
  except OSError:
    return set()


def kill_once(args, workdir, rng, log, train_seconds):
  """Launches the run and kills it at a random moment of its train loop: while a checkpoint write is in flight (a
  new Orbax tmp folder) or after a random time. Returns (signal, moment, exit code), or None if the run ended."""
  sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
  kind = rng.choice(["checkpoint_write", "random_time"])
  delay = rng.uniform(0.0, 2 * train_seconds / (args.kills + 1))
  run = Launch(args, workdir, log)
  old = tmp_dirs(workdir)
  while run.proc.poll() is None:
    if run.started is not None:
      since = time.perf_counter() - run.started
      if (kind == "checkpoint_write" and tmp_dirs(workdir) - old) or (kind == "random_time" and since >= delay):
        run.proc.send_signal(sig)
        return sig.name, kind, run.wait()
    time.sleep(0.001)
  run.wait()
  return None


def losses(workdir):
  """{step: [train/loss, ...]} from metrics.jsonl (a step listed twice would be a duplicate)."""
  out = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if "train/loss" in record:
      out.setdefault(record["step"], []).append(record["train/loss"])
  return out


def final_state(workdir, step):
  import orbax.checkpoint as ocp
  return ocp.PyTreeCheckpointer().restore(str(workdir / "checkpoints" / str(step) / "state"))


def compare_states(a, b):
  import jax
  import numpy as np
  flat_a = dict(jax.tree_util.tree_flatten_with_path(a)[0])
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  differing = [jax.tree_util.keystr(k) for k in flat_a if k not in flat_b or
               np.asarray(flat_a[k]).tobytes() != np.asarray(flat_b[k]).tobytes()]
  differing += [jax.tree_util.keystr(k) for k in flat_b if k not in flat_a]
  return len(flat_a), differing


def soak(args):
  rng = random.Random(args.seed)
  root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="soak-"))
  root.mkdir(parents=True, exist_ok=True)
  reference, soaked = root / "reference", root / "soaked"
  log = open(root / "soak.log", "w")
  began = time.perf_counter()
  run = Launch(args, reference, log)
  code = run.wait()
  ref_seconds = time.perf_counter() - (run.started or run.began)  # the train loop, eval and summary
  if code != 0:
    raise SystemExit(f"error: the uninterrupted run failed (exit {code}); see {root / 'soak.log'}")
  kills, launches = [], 0
  while len(kills) < args.kills and launches < 3 * args.kills + 3:
    launches += 1
    done = kill_once(args, soaked, rng, log, ref_seconds)
    if done is None:
      break  # the run finished before the kill: nothing left to interrupt
    kills.append(done)
  final = Launch(args, soaked, log).wait()
  launches += 1
  log.close()

  text = (root / "soak.log").read_text()
  ref_losses, soak_losses = losses(reference), losses(soaked)
  steps = range(1, args.steps + 1)
  missing = [s for s in steps if s not in soak_losses]
  duplicated = [s for s in steps if len(soak_losses.get(s, [])) > 1]
  unequal = [s for s in steps if s in soak_losses and soak_losses[s][-1] != ref_losses[s][-1]]
  arrays, differing = compare_states(final_state(reference, args.steps), final_state(soaked, args.steps))
  corrupt_dirs = [p.name for p in (soaked / "checkpoints").iterdir() if p.name.startswith("corrupt-")]
  corrupt_lines = len(re.findall(r"checkpoint step \d+ is corrupt", text))
  report = {
      "kills": len(kills), "sigkill": sum(k[0] == "SIGKILL" for k in kills),
      "sigterm": sum(k[0] == "SIGTERM" for k in kills),
      "during_checkpoint_write": sum(k[1] == "checkpoint_write" for k in kills),
      "at_random_time": sum(k[1] == "random_time" for k in kills), "launches": launches,
      "exit_codes_after_kill": sorted({k[2] for k in kills}), "final_exit": final, "steps": args.steps,
      "summary_written": (soaked / "summary.json").exists(),
      "final_params_bitwise": not differing, "arrays_compared": arrays, "arrays_differing": differing[:10],
      "steps_with_loss": len(steps) - len(missing), "steps_missing": len(missing),
      "steps_duplicated": len(duplicated), "losses_equal": len(steps) - len(missing) - len(unequal),
      "losses_unequal": unequal[:10], "corrupt_checkpoints": max(len(corrupt_dirs), corrupt_lines),
      "uninterrupted_train_seconds": round(ref_seconds, 1), "seconds": round(time.perf_counter() - began, 1),
      "folder": str(root),
  }
  return report


def main(argv=None):
  args = parse(sys.argv[1:] if argv is None else argv)
  report = soak(args)
  line = json.dumps(report)
  if args.json:
    pathlib.Path(args.json).write_text(line + "\n")
  print(line)
  ok = (report["final_params_bitwise"] and report["steps_missing"] == 0 and not report["losses_unequal"]
        and report["corrupt_checkpoints"] == 0 and report["final_exit"] == 0 and report["kills"] == args.kills)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
