"""Host offload (stem.md §7-8, model.stem.offload): tables and their Adam moments in pinned host memory, train steps
equal to the in-memory sparse-row path."""
import jax
import numpy as np
import pytest

from tessera import losses  # noqa: F401
from tessera.configs import defaults
from tessera.losses import registry as loss_registry
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import state as state_lib
from tessera.trainer import step as step_lib
from tessera.trainer import validate
from tessera.trainer.config_loader import ConfigError

from stem_helpers import tiny_cfg, tokens


def _config(offload, **optim):
  c = defaults.base_config()
  c.model.update(tiny_cfg(**{"stem.offload": offload}).to_dict())
  c.optim.update(dict(lr=1e-2, warmup_steps=0, stem_update="sparse_rows", groups=[{"pattern": "stem_table"}]))
  c.optim.update(optim)
  c.train.update(dict(batch_size=2, seq_len=8, steps=3))
  c.mesh.data = 1
  return c


def _train(c, steps=3):
  factory = state_lib.StateFactory(c, mesh_lib.make_mesh(c))
  step = step_lib.make_train_step(factory, loss_registry.get("next_token")(c.loss))
  t = np.asarray(tokens((2, 9), vocab=20))
  batch = {"inputs": t[:, :-1], "targets": t[:, 1:], "segment_ids": np.zeros((2, 8), np.int32),
           "positions": np.tile(np.arange(8, dtype=np.int32), (2, 1)), "loss_mask": np.ones((2, 8), np.float32)}
  with factory.context():
    state = factory.init(0)
    losses = []
    for _ in range(steps):
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"]))
    metrics["eval_loss"] = step_lib.make_eval_step(factory, loss_registry.get("next_token")(c.loss))(
        state["params"], batch)["loss"]
  return state, losses, metrics


def _is_table(path):
  return "stem_table" in jax.tree_util.keystr(path)


def test_offload_train_steps_equal_in_memory_and_keep_tables_on_host():
  state, losses, metrics = _train(_config(False))
  off_state, off_losses, off_metrics = _train(_config(True))
  np.testing.assert_allclose(off_losses, losses, rtol=1e-6)
  assert losses[-1] < losses[0]
  for key in ("grad_norm", "param_norm", "grad_norm/group0", "eval_loss"):
    np.testing.assert_allclose(off_metrics[key], metrics[key], rtol=1e-5)
  host = []
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(off_state)[0], jax.tree.leaves(state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
    if _is_table(path) and a.ndim == 2:
      host.append((jax.tree_util.keystr(path), a.sharding.memory_kind))
  # 2 STEM layers: each table plus its mu and nu
  assert len(host) == 6 and all(kind == "pinned_host" for _, kind in host), host
  assert sum("params" in p for p, _ in host) == 2


def test_offload_needs_sparse_rows():
  with pytest.raises(ConfigError, match="model.stem.offload"):
    validate.validate(_config(True, stem_update="dense"))
