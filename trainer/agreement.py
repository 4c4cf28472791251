"""Time- and signal-triggered saves that every process agrees on (multi-process runs only).

Orbax saves are collective: if one host enters a save while another keeps stepping, both hang. A step-count save is
the same on every process, but a clock or a SIGTERM is local. So after each step every process contributes two
flags (process 0's clock says a save is due; this process got SIGTERM/SIGINT) to a tiny jitted max over all devices,
and reads the agreed result one step later, after the next step is dispatched: the host never waits on the device
just for this, and every process acts on the same bits at the same step boundary. A signal to any one process stops
them all at the same step, each with its checkpoint saved. Single-process runs do not build this (they pay nothing).
"""
import jax
import jax.numpy as jnp
import numpy as np

from tessera.trainer import mesh as mesh_lib

TIME, STOP = 0, 1


class Agreement:
  """submit(time_due, stop) after step s; decision() at step s + 1 returns the flags every process agreed on."""

  def __init__(self, mesh, global_rows, local_rows):
    self.sharding = mesh_lib.batch_sharding(mesh)
    self.shape, self.local = (global_rows, 2), local_rows.stop - local_rows.start
    self.reduce = jax.jit(lambda f: jnp.max(f, axis=0), out_shardings=mesh_lib.replicated(mesh))
    self.pending = None

  def submit(self, time_due, stop):
    local = np.tile(np.array([[time_due, stop]], np.int32), (self.local, 1))
    self.pending = self.reduce(jax.make_array_from_process_local_data(self.sharding, local, self.shape))

  def decision(self):
    """(time_due, stop) agreed from the last submit(); (False, False) before the first."""
    if self.pending is None:
      return False, False
    flags, self.pending = np.asarray(jax.device_get(self.pending)), None
    return bool(flags[TIME]), bool(flags[STOP])
