"""The array digest: the same on host and device, on any sharding and mesh, and changed by any one flipped bit."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from ml_collections import ConfigDict

from tessera_testing import run_json_script
from tessera.trainer import array_digest
from tessera.trainer import checkpoint as ckpt_lib

TREE = {
    "f32": np.random.RandomState(0).randn(8, 16).astype(np.float32),
    "bf16": np.arange(48, dtype=np.float32).reshape(8, 6).astype(ml_dtypes.bfloat16),
    "i8": np.arange(-4, 4, dtype=np.int8), "bool": np.array([True, False, True]), "scalar": np.float32(3.0),
    "u32": np.arange(4, dtype=np.uint32), "key": np.asarray(jax.random.key_data(jax.random.key(0))),
}


def test_host_and_device_agree():
  assert array_digest.tree_digests(TREE) == array_digest.tree_digests(jax.tree.map(jnp.asarray, TREE))


def test_every_single_bit_flip_changes_the_digest():
  x = np.random.RandomState(1).randn(4, 4).astype(np.float32)
  base = array_digest.tree_digests({"x": x})["x"]
  seen = {base}
  for word in range(x.size):
    for bit in range(32):
      y = x.copy()
      y.view(np.uint32).reshape(-1)[word] ^= np.uint32(1 << bit)
      seen.add(array_digest.tree_digests({"x": y})["x"])
  assert len(seen) == 1 + 32 * x.size
  swapped = x.copy().reshape(-1)
  swapped[[0, 1]] = swapped[[1, 0]]
  assert array_digest.tree_digests({"x": swapped.reshape(4, 4)})["x"] != base  # position matters


def test_sharded_save_on_4_devices_verifies_on_1(tmp_path):
  """Digests written from a 4-device sharded state equal those of the same arrays here, and restore verifies."""
  code = f"""
import json, jax, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict
from tessera.trainer import array_digest, checkpoint as ckpt_lib
mesh = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Auto,))
w = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 7
state = {{"params": {{"w": jax.device_put(w, NamedSharding(mesh, P("x", None))),
                    "v": jax.device_put(w.T.copy(), NamedSharding(mesh, P(None, "x")))}}}}
c = ConfigDict(dict(max_to_keep=2, keep_period=0, async_save=True))
ckpt = ckpt_lib.Checkpointer({str(tmp_path)!r}, c)
ckpt.save(1, state, {{"next_batch": 1}})
ckpt.close()
print(json.dumps(array_digest.tree_digests(state)))
"""
  sharded = run_json_script(code, devices=4)
  w = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 7
  here = {"params": {"w": jnp.asarray(w), "v": jnp.asarray(w.T.copy())}}
  assert sharded == array_digest.tree_digests(here)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), here)
  ckpt = ckpt_lib.Checkpointer(tmp_path, ConfigDict(dict(max_to_keep=2, keep_period=0, async_save=True)))
  step, state, _ = ckpt.restore_latest(abstract)
  assert step == 1 and np.array_equal(np.asarray(state["params"]["w"]), w)
