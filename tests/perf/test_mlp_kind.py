"""model.mlp: the two-matrix GELU MLP (plain trainers' math), its accounting and its validation."""
import jax
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from tessera.configs import defaults
from tessera.models import config_checks, decoder, layers


def tiny_cfg(**overrides):
  cfg = ConfigDict(dict(
    name="decoder", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=0, d_ff=48,
    rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=True, dtype="float32", param_dtype="float32",
    remat="none", scan_layers=False, attention_impl="xla", init_std=0.1, init="normal"))
  cfg.update(overrides)
  return cfg


def params_of(cfg):
  with nnx.use_eager_sharding(False):
    model = decoder.build(cfg, nnx.Rngs(0))
  return model, nnx.to_flat_state(nnx.state(model, nnx.Param))


def test_gelu_mlp_is_up_gelu_down():
  model, flat = params_of(tiny_cfg(mlp="gelu"))
  names = {"/".join(map(str, p)) for p, _ in flat}
  assert "blocks/0/mlp/up" in names and "blocks/0/mlp/gate" not in names
  mlp = model.blocks[0].mlp
  x_BxTxD = jax.random.normal(jax.random.key(1), (2, 3, 32))
  want = jax.nn.gelu(x_BxTxD @ mlp.up[...], approximate=True) @ mlp.down[...]
  np.testing.assert_allclose(mlp(x_BxTxD), want, rtol=1e-6)


@pytest.mark.parametrize("mlp,tie", [("swiglu", True), ("gelu", True), ("gelu", False)])
def test_param_count_follows_mlp(mlp, tie):
  cfg = tiny_cfg(mlp=mlp, tie_embeddings=tie, scan_layers=not tie)
  _, flat = params_of(cfg)
  assert decoder.param_count(cfg)["total"] == sum(v.size for _, v in flat)


def test_gelu_flops_equal_swiglu_at_two_thirds_width():
  swiglu, gelu = tiny_cfg(d_ff=32), tiny_cfg(mlp="gelu", d_ff=48)
  assert decoder.train_flops_per_token(swiglu, 8) == decoder.train_flops_per_token(gelu, 8)


def test_default_mlp_builds_the_same_swiglu_params():
  old = tiny_cfg()  # a config saved before model.mlp existed
  _, a = params_of(old)
  _, b = params_of(tiny_cfg(mlp="swiglu"))
  for (pa, va), (pb, vb) in zip(a, b):
    assert pa == pb
    np.testing.assert_array_equal(va[...], vb[...])
  assert defaults.base_config().model.mlp == "swiglu"


def test_unknown_mlp_is_one_clear_line():
  with pytest.raises(ValueError, match="model.mlp") as e:
    params_of(tiny_cfg(mlp="relu"))
  assert "\n" not in str(e.value)
  config = defaults.base_config()
  config.model.mlp = "relu"
  with pytest.raises(ValueError, match="'model.mlp'"):
    config_checks.check_decoder(config)
  assert layers.MLPS.keys() == set(config_checks.MLPS)


def test_export_of_a_gelu_model_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
  import importlib.util
  import pathlib
  from tessera.trainer import inspect_run
  root = pathlib.Path(__file__).resolve().parents[2]
  spec = importlib.util.spec_from_file_location("export_hf", root / "scripts" / "export_hf.py")
  export_hf = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(export_hf)
  config = ConfigDict({"model": tiny_cfg(mlp="gelu", weight_format="float")})
  monkeypatch.setattr(inspect_run, "load", lambda workdir: (config, None, None, 0, None))
  assert export_hf.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "hf")]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "model.mlp='gelu'" in err, err
  assert not (tmp_path / "hf").exists()
