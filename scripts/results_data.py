"""The data file of a results page: written after each finished unit, safely from workers running side by side.

scripts/stem_results.py and scripts/gg_experiments.py keep every number of their page in one JSON file. Workers
(`--seed`) may share it: save() re-reads it under a lock, keeps the units the others added meanwhile, and replaces
the file atomically, so an abrupt stop leaves the last complete version; `commit` also records it in git.
"""
import fcntl
import json
import pathlib
import subprocess
import sys
import time

import numpy as np


def load(path: pathlib.Path) -> dict:
  return json.loads(path.read_text()) if path.exists() else {}


def save(path: pathlib.Path, data: dict, lock_dir: pathlib.Path, commit: bool, message: str):
  """Merge with the file on disk (dict entries: union, ours win; "commands": union in order), write, maybe commit."""
  lock_dir.mkdir(parents=True, exist_ok=True)
  with open(lock_dir / f".{path.stem}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    for key, theirs in load(path).items():
      if isinstance(theirs, dict) and isinstance(data.get(key, {}), dict):
        data[key] = {**theirs, **data.get(key, {})}
      elif key == "commands":
        data[key] = list(dict.fromkeys(theirs + data.get(key, [])))
      else:
        data.setdefault(key, theirs)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    if commit:
      _commit(path, message)


def _commit(path, message):
  root = pathlib.Path(__file__).resolve().parents[1]
  for _ in range(5):
    if subprocess.run(["git", "add", str(path)], cwd=root, capture_output=True).returncode == 0 and subprocess.run(
        ["git", "commit", "-q", "-m", message, "--", str(path)], cwd=root, capture_output=True).returncode == 0:
      return
    time.sleep(5)  # another commit holds the index lock
  print(f"note: could not commit {path}; the file is written", file=sys.stderr)


def mean_std(values):
  """(mean, sample std with ddof=1 (nan for one value), n): the spread every results page reports."""
  v = np.asarray(values, float)
  return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else float("nan")), len(v)


def fmt(values, digits=3):
  m, s, n = mean_std(values)
  return f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f} (1 seed)"
