"""What both prepare commands share: one-line input errors, a progress bar, and all-or-nothing output directories.

A prepared directory appears under its final name only once it is complete (built in a hidden sibling, then
renamed), so an interrupted or failed run never leaves something that looks like a dataset.
"""

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import sys
import time

STATS_FILE = "stats.json"


class DataError(ValueError):
  """Bad input: the message is one line naming the file (and column/row where there is one)."""


class ArgumentParser(argparse.ArgumentParser):
  """A bad flag is one `error:` line and exit 2, like every other input error of these tools."""

  def error(self, message):
    print(f"error: {self.prog}: {message} (--help lists the flags)", file=sys.stderr)
    sys.exit(2)


def at_least(minimum: int):
  """argparse type: an int >= minimum."""
  def parse(text):
    value = int(text)
    if value < minimum:
      raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value
  parse.__name__ = "int"
  return parse


def check_out(out: pathlib.Path):
  """--out can become a directory (checked before any reading, so a mistake costs nothing)."""
  parent = out
  while not parent.exists() and parent != parent.parent:
    parent = parent.parent
  if out.exists() and not out.is_dir():
    raise DataError(f"{out}: exists and is not a directory")
  if not parent.is_dir():
    raise DataError(f"{parent}: is a file, so {out} cannot be created")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise DataError(f"{parent}: not writable")


class Progress:
  """A one-line stderr progress bar (`\\r`-redrawn at most 10x/s) on a terminal; `close()` ends the line. Off when
  stderr is not a terminal: logs and error reports keep only their real lines."""

  def __init__(self, total: int, label: str, unit: str = "items"):
    self.total, self.label, self.unit = max(int(total), 1), label, unit
    self.done, self._began, self._drawn = 0, time.perf_counter(), 0.0
    self.shown = sys.stderr.isatty()

  def update(self, n: int = 1):
    self.done += n
    if not self.shown:
      return
    now = time.perf_counter()
    if now - self._drawn >= 0.1 or self.done >= self.total:
      self._drawn = now
      fraction = min(self.done / self.total, 1.0)
      bar = "#" * int(24 * fraction)
      rate = self.done / max(now - self._began, 1e-9)
      print(f"\r{self.label} [{bar:<24}] {self.done:,}/{self.total:,} {self.unit} ({rate:,.0f}/s)",
            end="", file=sys.stderr, flush=True)

  def close(self):
    if self.shown:
      print(file=sys.stderr, flush=True)


def read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def write_json(path: pathlib.Path, value: dict):
  path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def existing_dataset_matches(out: pathlib.Path, fingerprint: str, overwrite: bool) -> bool:
  """True when `out` already holds this exact dataset; raises if it holds anything else (unless overwrite)."""
  if not out.exists() or overwrite:
    return False
  if not out.is_dir():
    raise DataError(f"{out}: exists and is not a directory")
  if not any(out.iterdir()):
    return False
  stats_path = out / STATS_FILE
  if stats_path.is_file() and read_json(stats_path).get("fingerprint") == fingerprint:
    return True
  what = "a different prepared dataset" if stats_path.is_file() else "other files"
  raise DataError(f"{out}: already holds {what}; choose another --out or pass --overwrite")


@contextlib.contextmanager
def staged_dir(out: pathlib.Path):
  """Yields a hidden sibling directory to write into; on success it replaces `out`, on failure it is removed."""
  out.parent.mkdir(parents=True, exist_ok=True)
  staging = out.parent / f".{out.name}.partial-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir()
  try:
    yield staging
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  old = out.parent / f".{out.name}.old-{os.getpid()}"
  if out.exists():
    out.rename(old)
  staging.rename(out)
  shutil.rmtree(old, ignore_errors=True)


def run_main(main_fn, argv=None) -> int:
  """Runs a command; input errors become `error: <one line>` on stderr and exit status 2."""
  try:
    main_fn(argv)
  except DataError as e:
    print(f"\nerror: {str(e).splitlines()[0]}", file=sys.stderr)
    return 2
  except OSError as e:
    where = e.filename if e.filename is not None else ""
    print(f"\nerror: {where}: {e.strerror or e}", file=sys.stderr)
    return 2
  return 0


def warn(message: str):
  """A user-facing warning on stderr, every time (Python's warnings module shows each location only once)."""
  print(f"warning: {message}", file=sys.stderr, flush=True)
