"""scripts/bench_plain.py as a module, and tessera decoder params mapped onto its plain GPT (for equality tests)."""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

ROOT = pathlib.Path(__file__).resolve().parents[2]


def script(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


bench_plain = script("bench_plain")


def gelu_cfg(**overrides):
  """tessera's decoder at the plain GPT's math: GELU MLP, tied embeddings, n_kv_heads = n_heads."""
  cfg = ConfigDict(dict(
    name="decoder", vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=0, d_ff=64,
    mlp="gelu", rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=True, dtype="float32", param_dtype="float32",
    remat="none", scan_layers=False, attention_impl="xla", init_std=0.02, init="normal"))
  cfg.update(overrides)
  return cfg


def tessera_model(cfg, seed=0):
  from tessera.models import decoder
  with nnx.use_eager_sharding(False):
    return decoder.build(cfg, nnx.Rngs(seed))


def plain_params(model):
  """The plain GPT's params pytree holding `model`'s (a tessera gelu decoder) weights; q, k, v fused."""
  return tessera_tree_as_plain(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def tessera_tree_as_plain(tree):
  """A pure dict in the decoder's param layout (params or their grads) in the plain GPT's layout."""
  blocks = {}
  for i, b in tree["blocks"].items():
    blocks[i] = {"norm1": {"scale": b["attn_norm"]["scale"]}, "norm2": {"scale": b["mlp_norm"]["scale"]},
                 "qkv": jnp.stack([b["attn"]["q"], b["attn"]["k"], b["attn"]["v"]], axis=1),
                 "o": b["attn"]["o"], "up": b["mlp"]["up"], "down": b["mlp"]["down"]}
  return {"embed": tree["embed"], "blocks": blocks, "norm": {"scale": tree["final_norm"]["scale"]}}


def plain_gpt(cfg):
  return bench_plain.GPT(cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, jnp.dtype(cfg.dtype),
                         nnx.Rngs(1))


def plain_loss_and_grads(cfg, params, tokens_BxT, targets_BxT):
  graphdef, _ = nnx.split(plain_gpt(cfg), nnx.Param)
  return jax.jit(jax.value_and_grad(lambda p: bench_plain.loss_fn(graphdef, p, tokens_BxT, targets_BxT)))(params)
