"""The named device mesh and the logical-axis rules, both straight from the config."""
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from tessera.trainer import validate

AXES = validate.MESH_AXES
BATCH_AXES = ("data", "fsdp")


def make_mesh(config):
  sizes = validate.mesh_shape(config, jax.device_count())
  return jax.make_mesh(tuple(sizes[a] for a in AXES), AXES, axis_types=(AxisType.Auto,) * len(AXES))


def logical_rules(config):
  """config.sharding.rules as the tuple-of-pairs flax expects (JSON round trips turn tuples into lists)."""
  return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
               for name, axes in config.sharding.rules)


def batch_sharding(mesh):
  """Rows over (data, fsdp); sequence and features replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def local_rows(sharding, global_batch_size):
  """The contiguous slice of global batch rows this process's devices hold."""
  starts, stops = [], []
  for index in sharding.addressable_devices_indices_map((global_batch_size, 1)).values():
    rows = index[0]
    starts.append(rows.start or 0)
    stops.append(global_batch_size if rows.stop is None else rows.stop)
  return slice(min(starts), max(stops))
