"""STEM under a (data=2, fsdp=2, tensor=2) mesh of 8 fake CPU devices equals one device (check 7)."""
import pytest

from tessera_testing import run_json_script

SCRIPT = r"""
import json, jax, numpy as np
from jax.sharding import AxisType
from tessera import losses
from tessera.configs import defaults, gg, stem as stem_config
from tessera.losses import registry
from tessera.trainer import mesh as mesh_lib, state as state_lib, step as step_lib
c = stem_config.add_keys(gg.add_keys(defaults.base_config()))
c.model.update(dict(name="stem", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                    tie_embeddings=False, init="lingua"))
c.model.stem.layers = [1]
c.optim.update(dict(warmup_steps=1, groups=[{"pattern": "stem_table"}]))
c.train.update(dict(batch_size=8, seq_len=16, steps=5))
rng = np.random.default_rng(0)
batches = []
for _ in range(5):
  t = rng.integers(0, 64, (8, 17)).astype(np.int32)
  batches.append({"inputs": t[:, :-1], "targets": t[:, 1:], "segment_ids": np.zeros((8, 16), np.int32),
                  "positions": np.tile(np.arange(16, dtype=np.int32), (8, 1)),
                  "loss_mask": np.ones((8, 16), np.float32)})
out = {}
for name, shape, devices in (("one", (1, 1, 1), jax.devices()[:1]), ("mesh", (2, 2, 2), jax.devices())):
  mesh = jax.make_mesh(shape, mesh_lib.AXES, devices=devices, axis_types=(AxisType.Auto,) * 3)
  factory = state_lib.StateFactory(c, mesh)
  step = step_lib.make_train_step(factory)
  with factory.context():
    state, losses = factory.init(0), []
    for b in batches:
      state, metrics = step(state, b)
      losses.append(float(metrics["loss"]))
  table = state["params"]["blocks"][1]["mlp"]["stem_table"]
  out[name] = {"losses": losses, "shard": list(table.addressable_shards[0].data.shape), "shape": list(table.shape)}
print(json.dumps(out))
"""


@pytest.mark.slow  # ~40 s idle, ~2 min on a busy 2-core machine (two compiles of the train step)
def test_sharded_stem_equals_one_device_and_shards_tables_over_d_ff():
  out = run_json_script(SCRIPT, devices=8, timeout=300)
  for a, b in zip(out["one"]["losses"], out["mesh"]["losses"]):
    assert abs(a - b) < 1e-5, (out["one"]["losses"], out["mesh"]["losses"])
  assert out["mesh"]["shape"] == [64, 48] and out["mesh"]["shard"] == [64, 24]  # [V, F/2]: F on "tensor"
  assert out["one"]["shard"] == [64, 48]
