"""Shared by the TRIM-KV tests: a tiny trimkv config, building models without a mesh, jitted forwards."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from tessera.models import registry

GATE_PARAMS = ("w1", "b1", "w2", "bias")


def tiny_cfg(**overrides):
  """config.model of a 2-layer GQA decoder (4 query / 2 KV heads) with gates; `trimkv` overrides go in `gate`."""
  gate = overrides.pop("gate", {})
  cfg = ConfigDict(dict(
      name="trimkv", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=0, d_ff=64,
      rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=True, dtype="float32", param_dtype="float32",
      remat="none", scan_layers=False, attention_impl="xla", init_std=0.1, init="normal",
      trimkv=dict(gate="rg", gate_hidden=16, gate_bias_init=10.0, gate_init_std=0.02, retention_mode="mul_logit")))
  cfg.update(overrides)
  cfg.trimkv.update(gate)
  return cfg


def build(cfg, seed=0, name="trimkv"):
  with nnx.use_eager_sharding(False):
    return registry.get(name)(cfg, nnx.Rngs(seed))


def tokens(shape, seed=0, vocab=64):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def normal(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def set_gate_bias(model, value):
  """Every gate's per-head bias b := value (1e4: the identity limit, log beta == 0 exactly in fp32)."""
  blocks = [model.blocks] if not isinstance(model.blocks, nnx.List) else model.blocks  # scanned: one stack
  for block in blocks:
    block.retention_gate.bias[...] = jnp.full_like(block.retention_gate.bias[...], value)
  return model


def apply(model, fn):
  """fn(model) under jit (one compile instead of many eager op compiles)."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda state: fn(nnx.merge(graphdef, state)))(state)


def scanned_copy(model, cfg):
  """A scan_layers=True model (config `cfg`) holding the unrolled `model`'s params, stacked per layer."""
  scanned = build(cfg)
  flat = {path: var[...] for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  n = len(model.blocks)

  def value(path):
    if path[0] == "blocks":
      return jnp.stack([flat[("blocks", i, *path[1:])] for i in range(n)])
    return flat[path]
  nnx.update(scanned, nnx.from_flat_state([(path, var.replace(value(path)))
                                           for path, var in nnx.to_flat_state(nnx.state(scanned, nnx.Param))]))
  return scanned
