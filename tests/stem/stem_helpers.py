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
