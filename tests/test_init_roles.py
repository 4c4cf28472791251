"""Initialisers decide by a weight's role (named where the module creates it), never by its shape: with V = F or
V = d every parameter kind still gets its spec's standard deviation (stem.md section 5, gg_prior.md section 3)."""
import math

import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from tessera.models import registry

TRUNCATED_3SIGMA = 0.98658  # std of a standard normal truncated at +-3


def build(name="decoder", init="lingua", **shape):
  cfg = ConfigDict(dict(
      name=name, vocab_size=384, d_model=128, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=0, d_ff=384,
      rope_theta=1e4, norm_eps=1e-6, tie_embeddings=False, dtype="float32", param_dtype="float32", remat="none",
      scan_layers=False, attention_impl="xla", init_std=0.02, init=init,
      gg=dict(shape=2.0, xi=2.0, fan_mode="reference"),
      stem=dict(layers=[1], table_init="xavier_normal", lookup_impl="xla", offload=False)))
  cfg.update(shape)
  with nnx.use_eager_sharding(False):
    return cfg, registry.get(name)(cfg, nnx.Rngs(0))


def kinds(model):
  """{kind: array} of the first block's weights and the vocabulary matrices."""
  block = model.blocks[0]
  return {"embed": model.embed, "unembed": model.unembed, "q": block.attn.q, "k": block.attn.k, "o": block.attn.o,
          "gate": block.mlp.gate, "up": block.mlp.up, "down": block.mlp.down}


@pytest.mark.parametrize("shape", [dict(vocab_size=384, d_ff=384), dict(vocab_size=128, d_model=128)],
                         ids=["V=F", "V=d"])
def test_lingua_std_by_role(shape):
  cfg, model = build(**shape)
  d, F, H, E = cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.d_model // cfg.n_heads
  want = {"embed": d, "unembed": d, "q": d, "k": d, "gate": d, "up": d, "o": H * E, "down": F}
  for kind, weight in kinds(model).items():
    std = float(np.std(np.asarray(weight[...])))
    assert std == pytest.approx(want[kind] ** -0.5 * TRUNCATED_3SIGMA, rel=0.05), kind


@pytest.mark.parametrize("shape", [dict(vocab_size=384, d_ff=384), dict(vocab_size=128, d_model=128)],
                         ids=["V=F", "V=d"])
def test_gg_variance_by_role(shape):
  cfg, model = build(init="gg", **shape)
  d, F, V, H, E = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_heads, cfg.d_model // cfg.n_heads
  n = {"embed": V, "unembed": V, "q": H * E, "k": H * E, "gate": F, "up": F, "o": d, "down": d}  # output size
  for kind, weight in kinds(model).items():
    var = float(np.var(np.asarray(weight[...])))
    assert var == pytest.approx(cfg.gg.xi / n[kind], rel=0.08), kind


def test_stem_down_projection_at_v_equals_f():
  cfg, model = build(name="stem", vocab_size=384, d_ff=384)
  down = np.asarray(model.blocks[1].mlp.down[...])  # a STEM layer's W_down
  assert float(np.std(down)) == pytest.approx(cfg.d_ff ** -0.5 * TRUNCATED_3SIGMA, rel=0.05)
  assert math.isclose(float(np.std(np.asarray(model.blocks[0].mlp.down[...]))), float(np.std(down)), rel_tol=0.1)
