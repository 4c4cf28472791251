"""Orbax checkpoints under <workdir>/checkpoints: items `state` (a pytree of arrays), `data` (JSON position) and
`digest` (JSON: a digest of every array's bytes, array_digest.py, and the data position).

`state` is a plain dict of arrays whose top-level keys may grow ("step", "params", "opt_state", "rng", ...), so plain
Orbax can list the steps and restore it without tessera. The step number is the number of completed updates.

Integrity: the digest is computed from the arrays at save() and saved as a third item of the same Orbax step, so
Orbax commits it with the arrays (also for async saves: the step directory is renamed into place only when every
item is written). restore() recomputes it from the restored arrays: a step that is unreadable or restores different
bytes raises CorruptCheckpoint; restore_latest() reports it in one stderr line, moves it to
checkpoints/corrupt-<step>/ (never deleted) and falls back to the next newest step. Only committed Orbax steps count
(a digit-named directory with commit_success.txt and _CHECKPOINT_METADATA); anything else is ignored with a warning.
"""
import dataclasses
import gc
import json
import logging
import os
import re
import sys
import time

import jax
import orbax.checkpoint as ocp
from etils import epath

from tessera.trainer import array_digest

STATE, DATA, DIGEST = "state", "data", "digest"
_COMMIT_FILES = ("commit_success.txt", "_CHECKPOINT_METADATA")
_warned = set()


class CorruptCheckpoint(Exception):
  """A committed step that cannot be read or restores other bytes than were saved."""

  def __init__(self, step, path, reason):
    super().__init__(f"checkpoint step {step} is corrupt: {path}: {reason}")
    self.step, self.path, self.reason = step, path, reason


class CheckpointMismatch(ValueError):
  """The checkpoint is intact but does not fit the target (another model shape or state layout)."""


def absolute(path):
  """Orbax wants absolute paths; remote ones (gs://...) already are."""
  return epath.Path(path) if "://" in str(path) else epath.Path(os.path.abspath(path))


def directory(workdir):
  return absolute(workdir) / "checkpoints"


def _warn(message):
  if message not in _warned and jax.process_index() == 0:
    _warned.add(message)
    print(f"warning: {message}", file=sys.stderr, flush=True)


def is_committed(step_dir):
  """A step directory Orbax finished: written to a temporary name, completed, then renamed into place."""
  step_dir = epath.Path(step_dir)
  return all((step_dir / f).exists() for f in _COMMIT_FILES) and (step_dir / STATE).is_dir()


def committed_steps(path):
  """Sorted committed steps under a checkpoints/ directory; other digit-named entries are ignored with a warning."""
  path = epath.Path(path)
  if not path.exists():
    return []
  steps = []
  for entry in path.iterdir():
    if not entry.name.isdigit():
      continue  # Orbax temporaries (`6.orbax-checkpoint-tmp-...`), corrupt-<step>, the user's own files
    if entry.is_dir() and is_committed(entry):
      steps.append(int(entry.name))
    else:
      _warn(f"{entry} is not a committed Orbax checkpoint (no {' / '.join(_COMMIT_FILES)}); ignored")
  return sorted(steps)


def latest_step(workdir):
  """Latest committed step, or None; cheap enough to call before anything is written (reads no arrays)."""
  steps = committed_steps(directory(workdir))
  return steps[-1] if steps else None


@dataclasses.dataclass(frozen=True)
class _CommittedNameFormat:
  """Orbax's standard step naming, restricted to committed steps (so a stray `checkpoints/99` is not a step)."""
  base: object = dataclasses.field(default_factory=ocp.step.standard_name_format)

  def build_name(self, step):
    return self.base.build_name(step)

  def find_all(self, base_path):
    committed = set(committed_steps(base_path))
    return [m for m in self.base.find_all(base_path) if m.step in committed]

  def find_step(self, base_path, step):
    metadata = self.base.find_step(base_path, step)
    if not is_committed(metadata.path):
      raise ValueError(f"step {step} under {base_path} is not a committed checkpoint")
    return metadata


def _digest_handler():
  """Orbax's JSON handler (so plain Orbax still reads the item) whose value may be a function, called in the
  background commit: the save need not wait for the device hashing. Falls back to eager values if Orbax changes."""
  handler = ocp.JsonCheckpointHandler()
  save_fn = getattr(handler, "_save_fn", None)
  if save_fn is None:
    return handler, False

  async def lazy_save_fn(x, directory):
    await save_fn(x() if callable(x) else x, directory)

  handler._save_fn = lazy_save_fn
  return handler, True


class Checkpointer:
  """Async saves with digests; verified restore onto any mesh (the target carries shardings), with fallback."""

  def __init__(self, workdir, c):
    self.directory = directory(workdir)
    digest_handler, self._lazy_digest = _digest_handler()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=c.max_to_keep, keep_period=c.keep_period or None,
        enable_async_checkpointing=c.async_save, create=True, step_name_format=_CommittedNameFormat())
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE: ocp.PyTreeCheckpointHandler(), DATA: ocp.JsonCheckpointHandler(),
                       DIGEST: digest_handler})

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step, state, data_position):
    """Starts an (async) save of state, data position and their digest; returns False if `step` is already saved.

    The digest is hashed on device while Orbax copies the state to host; it is written by Orbax's background commit
    (_digest_handler), before the step directory is committed.
    """
    stray = self.directory / str(step)  # not one of ours: Orbax renames a step into place only when complete
    if stray.exists() and not is_committed(stray) and jax.process_index() == 0:
      _move_aside(stray, "stray")
    arrays = array_digest.start_tree_digests(state)
    position = json.loads(json.dumps(data_position))  # a copy: the caller may change its dict
    digest = lambda: {"arrays": arrays(), "data": position, "format": 1}  # noqa: E731
    if not self._lazy_digest:
      digest = digest()
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(data_position),
        digest=ocp.args.JsonSave(digest)), force=True)

  def restore(self, step, abstract_state):
    """abstract_state: ShapeDtypeStructs with the target shardings. Returns (state, data_position).

    Raises CorruptCheckpoint (unreadable, or other bytes than saved) or CheckpointMismatch (does not fit the target).
    """
    self._check_fits(step, abstract_state)
    restored = self._read(step, state=_restore_args(abstract_state), data=ocp.args.JsonRestore())
    self._verify(step, restored[STATE], restored.get(DIGEST), restored[DATA])
    return restored[STATE], restored[DATA]

  def restore_params(self, step, abstract_params):
    """Only `params` of a saved state (for --init-from, eval and sample), verified like restore()."""
    self._check_fits(step, {"params": abstract_params})
    restored = self._read(step, state=_restore_args({"params": abstract_params}, partial=True))
    self._verify(step, restored[STATE], restored.get(DIGEST))
    return restored[STATE]["params"]

  def restore_latest(self, abstract_state):
    """(step, state, data_position) of the newest intact step, or None when there is none.

    Each corrupt newer step is reported on stderr in one line and moved to checkpoints/corrupt-<step>/.
    """
    return self._latest(lambda step: (step, *self.restore(step, abstract_state)))

  def restore_latest_params(self, abstract_params):
    """(step, params) of the newest intact step, or None; corrupt newer steps are handled as in restore_latest."""
    return self._latest(lambda step: (step, self.restore_params(step, abstract_params)))

  def saved_shapes(self, step):
    """{"params": tree of shapes, ...} as stored, for the shape-mismatch check. Raises CorruptCheckpoint."""
    try:
      meta = self.manager.item_metadata(step)[STATE]
    except Exception as e:  # noqa: BLE001  (any failure to read the metadata is a broken checkpoint)
      raise self._corrupt(step, e, STATE + "/_METADATA") from e
    tree = meta.tree if hasattr(meta, "tree") else meta
    if tree is None:
      raise CorruptCheckpoint(step, self.directory / str(step) / STATE / "_METADATA", "no array metadata")
    return tree

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()

  # -- internals --

  def _latest(self, restore_step):
    self.wait()
    for step in reversed(self.all_steps()):
      try:
        return restore_step(step)
      except CorruptCheckpoint as e:
        older = [s for s in self.all_steps() if s < step]
        moved = self._quarantine(step)
        if jax.process_index() == 0:
          print(f"{e}; moved to {moved}, " + (f"falling back to step {older[-1]}" if older else
                                               "no older intact checkpoint"), file=sys.stderr, flush=True)
    return None

  def _quarantine(self, step):
    """Moves a corrupt step aside (never deletes it) and makes Orbax forget it; every process agrees."""
    target = None
    if jax.process_index() == 0:
      target = _move_aside(self.directory / str(step), "corrupt")
    _sync(f"tessera_quarantine_{step}")
    self.manager.reload()
    return target or self.directory / f"corrupt-{step}"

  def _check_fits(self, step, abstract):
    """Every target leaf exists in the checkpoint with the same shape; else CheckpointMismatch (not corruption)."""
    saved = {array_digest.path_str(p): getattr(leaf, "shape", None)
             for p, leaf in jax.tree_util.tree_flatten_with_path(self.saved_shapes(step))[0]}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
      name = array_digest.path_str(path)
      if name not in saved:
        raise CheckpointMismatch(f"{self.directory / str(step)}: has no array {name!r} (another state layout)")
      if saved[name] is not None and tuple(saved[name]) != tuple(leaf.shape):
        raise CheckpointMismatch(f"{self.directory / str(step)}: array {name!r} has shape {tuple(saved[name])} in "
                                 f"the checkpoint but {tuple(leaf.shape)} in this config (model shape changed)")

  def _read(self, step, **items):
    """Orbax restore of the given items (+ the digest when the step has one); any failure is corruption."""
    step_dir = self.directory / str(step)
    if (step_dir / DIGEST).exists():
      items[DIGEST] = ocp.args.JsonRestore()
    elif DIGEST in _item_names(step, step_dir):
      raise CorruptCheckpoint(step, step_dir / DIGEST, "missing (the step was saved with one)")
    error = None
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except (MemoryError, KeyboardInterrupt):
      raise
    except Exception as e:  # noqa: BLE001
      if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
        raise
      error = e
    if _any_process(error is not None):
      corrupt = self._corrupt(step, error or RuntimeError("unreadable on another process"), STATE)
      _release(error)
      del error
      _collect_quietly()  # Orbax leaves failed read coroutines behind; their "Exception ignored" dumps are noise
      raise corrupt
    return restored

  def _verify(self, step, state, digest, data_position=None):
    if digest is None:
      _warn(f"{self.directory / str(step)} has no digest (saved before digests existed); restored unverified")
      return
    if data_position is not None and digest.get("data") != data_position:
      raise CorruptCheckpoint(step, self.directory / str(step) / DATA,
                              f"data position {data_position} but {digest.get('data')} was saved")
    actual = array_digest.tree_digests(state)
    for name, value in actual.items():
      if digest["arrays"].get(name) != value:
        raise CorruptCheckpoint(step, self.directory / str(step) / STATE,
                                f"array {name!r} digest {value} differs from the saved {digest['arrays'].get(name)}")

  def _corrupt(self, step, error, default):
    """CorruptCheckpoint naming the damaged file (named by the error, else found by parsing the step's small
    structural files, else `default`) and the most specific line of the error."""
    step_dir = self.directory / str(step)
    text = _error_text(error)
    named = [m for m in re.findall(re.escape(str(step_dir)) + r"/([^\s\"',;:\[\]]+)", text) if (step_dir / m).is_file()]
    path = step_dir / named[-1] if named else (_find_damaged(step_dir) or step_dir / default)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = next((l for l in lines if re.match(r"[A-Z_]{5,}: ", l)), lines[0] if lines else type(error).__name__)
    line = re.sub(r"\s*\[tensorstore_spec=.*", "", line).replace(str(step_dir) + "/", "")
    return CorruptCheckpoint(step, path, f"unreadable ({type(error).__name__}: {line[:300]})")


def _item_names(step, step_dir):
  """The items Orbax recorded for a step (a step saved before digests existed has no `digest`)."""
  path = step_dir / "_CHECKPOINT_METADATA"
  try:
    return set(json.loads(path.read_text())["item_handlers"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CorruptCheckpoint(step, path, f"unreadable ({type(e).__name__}: {e})") from None


def _find_damaged(step_dir):
  """The first of the step's small structural files that does not parse (a JSONDecodeError names no file)."""
  for path in _small_files(step_dir):
    if path.name == "manifest.ocdbt":
      if path.stat().length < 16:
        return path
      continue
    try:
      json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
      return path
  return None


def _small_files(folder):
  """Files under a step directory, skipping the array data folders (d/)."""
  for path in sorted(folder.iterdir()):
    if path.is_dir() and path.name != "d":
      yield from _small_files(path)
    elif path.is_file() and path.name != "commit_success.txt":
      yield path


def _error_text(error):
  """The error and its causes, as one string (tensorstore names the file in a nested cause)."""
  parts, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    parts.append(str(error))
    error = error.__cause__ or error.__context__
  return "\n".join(parts)


def _release(error):
  """Drops the tracebacks of an error chain (they hold Orbax's failed coroutines alive)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    error.__traceback__ = None
    error = error.__cause__ or error.__context__


def _collect_quietly():
  """Collects the failed restore's leftover tasks now, without their tracebacks (the one-line report says it all)."""
  hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
  asyncio_log = logging.getLogger("asyncio")
  level = asyncio_log.level
  asyncio_log.setLevel(logging.CRITICAL)
  try:
    for _ in range(3):  # Orbax's reader threads finish their cancelled reads a moment later
      gc.collect()
      time.sleep(0.02)
  finally:
    sys.unraisablehook = hook
    asyncio_log.setLevel(level)


def _move_aside(path, prefix):
  """path -> <parent>/<prefix>-<name>[.N]; returns the new path."""
  target = path.parent / f"{prefix}-{path.name}"
  n = 1
  while target.exists():
    target, n = path.parent / f"{prefix}-{path.name}.{n}", n + 1
  path.rename(target)
  return target


def _any_process(flag):
  if jax.process_count() == 1:
    return flag
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def _sync(name):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _restore_args(abstract, partial=False):
  return ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                partial_restore=partial)
