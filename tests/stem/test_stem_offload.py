"""Host offload (stem.md §7-8, model.stem.offload): tables and their Adam moments in pinned host memory, train steps
equal to the in-memory sparse-row path."""
import jax
import numpy as np
import pytest

from tessera.trainer import zoo
from tessera.trainer.config_loader import ConfigError

from stem_helpers import sparse_rows_config, train_steps


def _is_table(path):
  return "stem_table" in jax.tree_util.keystr(path)


def test_offload_train_steps_equal_in_memory_and_keep_tables_on_host():
  _, state, losses, metrics, _ = train_steps(sparse_rows_config(3))
  _, off_state, off_losses, off_metrics, _ = train_steps(sparse_rows_config(3, offload=True))
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
    zoo.check(sparse_rows_config(3, offload=True, stem_update="dense"))
