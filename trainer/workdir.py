"""What a workdir already holds decides what a run may do; all checks here happen before anything is written."""
import contextlib
import json
import os
import shutil
import pathlib

from etils import epath

from tessera.trainer import config_loader
from tessera.trainer.config_loader import ConfigError

# Changing these changes parameter shapes, the tree, or what a saved data position means: not allowed on resume.
SHAPE_KEYS = ("model.name", "model.vocab_size", "model.d_model", "model.n_layers", "model.n_heads",
              "model.n_kv_heads", "model.head_dim", "model.d_ff", "model.tie_embeddings", "model.param_dtype",
              "model.scan_layers", "train.batch_size", "train.seq_len")


def config_changes(saved, new):
  """{key: (old, new)} over flattened configs."""
  old_flat, new_flat = config_loader.flatten(saved), config_loader.flatten(new)
  return {k: (old_flat.get(k), new_flat.get(k)) for k in sorted(set(old_flat) | set(new_flat))
          if old_flat.get(k) != new_flat.get(k)}


def check_resume(workdir, config_dict):
  """Changes against the saved config.json; a shape-relevant change raises ConfigError."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    return {}
  changes = config_changes(json.loads(path.read_text()), config_dict)
  bad = [k for k in changes if any(k == s or k.startswith(s + ".") for s in SHAPE_KEYS)]
  if bad:
    k = bad[0]
    raise ConfigError(f"config key {k!r} changed from {changes[k][0]!r} to {changes[k][1]!r} but {workdir} has "
                      f"checkpoints of the old shape; use a new --workdir")
  return changes


RUN_MARKERS = ("checkpoints", "metrics.jsonl", "tb", "data")  # what a tessera run (or its prepared data) leaves


def check_fresh(workdir):
  """A workdir without checkpoints may be new, empty (only empty folders) or an earlier attempt of a run; one that
  holds other files is somebody else's directory: ConfigError, nothing touched."""
  workdir = epath.Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f"--workdir: {workdir} is a file, not a directory")
  if not workdir.exists() or any((workdir / m).exists() for m in RUN_MARKERS):
    return
  if "://" in str(workdir):  # remote: the top level only (a recursive listing is an RPC per folder)
    files = [p.name for p in workdir.iterdir() if p.is_file()]
  else:
    files = [f for _, _, names in os.walk(str(workdir)) for f in names]
  if files:
    raise ConfigError(f"--workdir: {workdir} holds files ({files[0]}, ...) but is not a tessera run; "
                      "choose a new or empty directory")


# What a run writes into its workdir, and whether each is a folder or a file.
OUTPUTS = {"checkpoints": "folder", "tb": "folder", "data": "folder", "profile": "folder", "metrics.jsonl": "file",
           "config.json": "file", "summary.json": "file", "init.json": "file"}


def check_writable(workdir):
  """Every output can be written where it goes: checked before the first write, so a run never dies halfway through
  writing (a workdir under a file, on a read-only disk, or with a file where a folder goes)."""
  if "://" in str(workdir):  # remote stores report permissions only when written to
    return
  path = pathlib.Path(str(workdir))
  existing = path
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  if not existing.is_dir():
    raise ConfigError(f"--workdir: {existing} is a file, so {path} cannot be a run directory")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f"--workdir: {existing} is not writable (read-only or no permission)")
  for name, kind in OUTPUTS.items():
    target = path / name
    if target.exists() and target.is_dir() != (kind == "folder"):
      raise ConfigError(f"--workdir: {target} is a {'folder' if target.is_dir() else 'file'} but the run writes a "
                        f"{kind} there")
    if target.is_dir() and not os.access(target, os.W_OK | os.X_OK):
      raise ConfigError(f"--workdir: {target} is not writable (read-only or no permission)")


def read_json(path):
  try:
    return json.loads(epath.Path(path).read_text())
  except ValueError:
    return {}


def write_json(path, value):
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)


@contextlib.contextmanager
def staged(out):
  """Yields a hidden folder beside `out` to assemble a new run in; renamed to `out` when the block ends, removed
  when it raises: a failed script leaves nothing behind and never a half-written `out`."""
  out = epath.Path(out)
  tmp = out.parent / f".{out.name}.partial"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  tmp.rename(out)
