"""Orbax checkpoints under <workdir>/checkpoints: items `state` (a pytree of arrays) and `data` (JSON position).

`state` = {"step", "params" (pure nested dict), "opt_state", "rng" (raw key data)}, so plain Orbax can list the steps
and restore it without tessera. The step number is the number of completed updates (Orbax's default naming).
"""
import os

import orbax.checkpoint as ocp
from etils import epath

STATE, DATA = "state", "data"


def absolute(path):
  """Orbax wants absolute paths; remote ones (gs://...) already are."""
  return epath.Path(path) if "://" in str(path) else epath.Path(os.path.abspath(path))


def directory(workdir):
  return absolute(workdir) / "checkpoints"


def latest_step(workdir):
  """Latest committed step, or None; cheap enough to call before anything is written."""
  path = directory(workdir)
  if not path.exists():
    return None
  steps = ocp.utils.checkpoint_steps(path)
  return max(steps) if steps else None


class Checkpointer:
  """Async saves on step/time policies, restore of the latest step onto any mesh (the target carries shardings)."""

  def __init__(self, workdir, c):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=c.max_to_keep, keep_period=c.keep_period or None,
        enable_async_checkpointing=c.async_save, create=True)
    self.manager = ocp.CheckpointManager(
        directory(workdir), options=options,
        item_handlers={STATE: ocp.PyTreeCheckpointHandler(), DATA: ocp.JsonCheckpointHandler()})

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, data_position):
    """Starts an (async) save; returns False if `step` is already saved."""
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(data_position)), force=True)

  def restore(self, step, abstract_state):
    """abstract_state: ShapeDtypeStructs with the target shardings. Returns (state, data_position)."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=_restore_args(abstract_state), data=ocp.args.JsonRestore()))
    return restored[STATE], restored[DATA]

  def restore_params(self, step, abstract_params):
    """Only `params` of a saved state (for --init-from, eval and sample)."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=_restore_args({"params": abstract_params}, partial=True)))
    return restored[STATE]["params"]

  def saved_shapes(self, step):
    """{"params": tree of shapes} as stored, for the shape-mismatch check."""
    meta = self.manager.item_metadata(step)[STATE]
    tree = meta.tree if hasattr(meta, "tree") else meta
    return tree

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _restore_args(abstract, partial=False):
  return ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                partial_restore=partial)
