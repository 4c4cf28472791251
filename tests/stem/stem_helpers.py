"""Tiny STEM configs and jitted runners shared by the STEM tests."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from tessera.models import registry


def tiny_cfg(**overrides):
  cfg = ConfigDict(dict(
      name="stem", vocab_size=64, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=0, d_ff=48,
      rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=False, dtype="float32", param_dtype="float32",
      remat="none", scan_layers=False, attention_impl="xla", init="lingua", init_std=0.02,
      stem=dict(layers=[1, 3], table_init="normal_1", lookup_impl="xla", offload=False)))
  cfg.update_from_flattened_dict({k: v for k, v in overrides.items()})
  return cfg


def build(cfg, seed=0):
  with nnx.use_eager_sharding(False):
    return registry.get(cfg.name)(cfg, nnx.Rngs(seed))


def abstract(cfg):
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: registry.get(cfg.name)(cfg, nnx.Rngs(0)))


@jax.jit
def _forward(graphdef, state, tokens_BxT, stem_ids_BxT, override):
  return nnx.merge(graphdef, state)(tokens_BxT, stem_ids_BxT=stem_ids_BxT, stem_row_override=override)


def run(model, tokens_BxT, stem_ids_BxT=None, override=None):
  return _forward(*nnx.split(model), tokens_BxT, stem_ids_BxT, override)


def tokens(shape, seed=0, vocab=64):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def normal(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def sparse_rows_config(steps, offload=False, **optim):
  """A full trainer config around tiny_cfg: sparse-row AdamW with the tables in their own group, one device."""
  from tessera.configs import defaults, gg, stem
  c = stem.add_keys(gg.add_keys(defaults.base_config()))
  c.model.update(tiny_cfg(**{"stem.offload": offload}).to_dict())
  c.optim.update(dict(lr=1e-2, warmup_steps=0, stem_update="sparse_rows", groups=[{"pattern": "stem_table"}]))
  c.optim.update(optim)
  c.train.update(dict(batch_size=2, seq_len=8, steps=steps))
  c.mesh.data = 1
  return c


def train_steps(c):
  """Runs c.train.steps real jitted train steps on one fixed batch.

  Returns (initial params on host, final state, losses, last metrics + "eval_loss", input ids)."""
  from tessera.trainer import mesh as mesh_lib, state as state_lib, step as step_lib
  factory = state_lib.StateFactory(c, mesh_lib.make_mesh(c))
  step = step_lib.make_train_step(factory)
  t = np.asarray(tokens((2, 9), vocab=20))
  batch = {"inputs": t[:, :-1], "targets": t[:, 1:], "segment_ids": np.zeros((2, 8), np.int32),
           "positions": np.tile(np.arange(8, dtype=np.int32), (2, 1)), "loss_mask": np.ones((2, 8), np.float32)}
  with factory.context():
    state = factory.init(0)
    initial_params = jax.device_get(state["params"])
    losses = []
    for _ in range(c.train.steps):
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"]))
    metrics["eval_loss"] = step_lib.make_eval_step(factory)(
        {k: state[k] for k in ("params", "frozen", "model_state")}, batch)["loss"]
  return initial_params, state, losses, metrics, batch["inputs"]
