"""GG priors wired into the trainer: GG init through the model builder, BackSlash in the train step, weight stats
in TensorBoard, scripts/quantize -> scripts/eval, scripts/deepshape -> --init-from, fake-quant (gg_prior.md)."""
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from tessera_testing import ROOT, TINY, run_cli, tb_scalars
from tessera.configs import defaults, gg
from tessera.models import config_checks, numerics, quantized, registry
from tessera.trainer import zoo
from tessera.trainer.config_loader import ConfigError


def transform(*args, check=True):
  result = subprocess.run([sys.executable, str(ROOT / "scripts" / "transform_run.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
  return result


def model_cfg(init, fan_mode="reference"):
  return ConfigDict(dict(
    name="decoder", vocab_size=512, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=0, d_ff=256,
    rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=False, dtype="float32", param_dtype="float32",
    remat="none", scan_layers=False, attention_impl="xla", init_std=0.02, init=init,
    gg=dict(shape=1.0, xi=2.0, fan_mode=fan_mode)))


def build(cfg):
  with nnx.use_eager_sharding(False):
    return registry.get("decoder")(cfg, nnx.Rngs(0))


def test_gg_init_variance_rule_and_metadata_through_the_builder():
  gg, normal = build(model_cfg("gg")), build(model_cfg("normal"))
  D, F, V, E = 64, 256, 512, 16
  block = gg.blocks[0]
  # fan_mode "reference": n = output size of a kernel, V of the embedding; Var = ξ/n with ξ = 2.
  expected_n = {"embed": (gg.embed, V), "unembed": (gg.unembed, V), "q": (block.attn.q, 4 * E),
                "k": (block.attn.k, 2 * E), "o": (block.attn.o, D), "up": (block.mlp.up, F),
                "down": (block.mlp.down, D)}
  for name, (p, n) in expected_n.items():
    assert np.var(np.asarray(p[...])) == pytest.approx(2.0 / n, rel=0.1), name
  w = np.asarray(gg.embed[...], np.float64).ravel()
  assert np.mean(w ** 4) / np.mean(w ** 2) ** 2 == pytest.approx(6.0, rel=0.15)  # Laplace (ν = 1) kurtosis
  assert np.all(np.asarray(block.attn_norm.scale[...]) == 1.0)
  for path, p in nnx.to_flat_state(nnx.state(gg, nnx.Param)):
    other = dict(nnx.to_flat_state(nnx.state(normal, nnx.Param)))[path]
    assert p.get_metadata().get("sharding_names") == other.get_metadata().get("sharding_names"), path
  fan_in = build(model_cfg("gg", fan_mode="fan_in"))
  assert np.var(np.asarray(fan_in.blocks[0].mlp.down[...])) == pytest.approx(2.0 / F, rel=0.1)


@pytest.mark.parametrize("key, value, message", [
    ("model.gg.shape", 3.5, "must be in (0, 3]"),
    ("model.gg.shape", 0.0, "must be in (0, 3]"),
    ("model.gg.fan_mode", "fan_out", "is not one of"),
    ("model.weight_format", "rf9", "is not one of"),
    ("model.weight_format", "rf8", "are for eval/sample"),
    ("model.fake_quant", "int4", "is not one of"),
    ("regularizer.backslash.pool", "rows", "is not one of"),
    ("regularizer.backslash.end_fraction", 1.5, "must be in [0, 1]"),
    ("regularizer.backslash.clip", 0.0, "must be > 0"),
    ("regularizer.backslash.nu", -1.0, "forced shape in (0, 3]"),
])
def test_validation_names_the_key(key, value, message):
  c = gg.add_keys(defaults.base_config())
  section, _, name = key.rpartition(".")
  node = c
  for part in section.split("."):
    node = node[part]
  node[name] = value
  with pytest.raises(ConfigError, match=rf"config key '{key}'.*{re.escape(message)}"):
    zoo.check(c)


def test_backslash_needs_fp32_master_weights_and_formats_match_numerics():
  c = gg.add_keys(defaults.base_config())
  c.regularizer.backslash.enabled = True
  c.model.param_dtype = "bfloat16"
  with pytest.raises(ConfigError, match="'regularizer.backslash.enabled'.*fp32 master weights"):
    zoo.check(c)
  assert config_checks.NUMBER_FORMATS == numerics.FORMATS


def test_backslash_nu_forces_the_shape_the_matched_l1_baseline():
  """regularizer.backslash.nu = 1: every weight moves by exactly lam/N toward 0 (L1 proximal), nu_hat logged as 1."""
  from tessera.losses import backslash_rule
  c = gg.add_keys(defaults.base_config())
  c.regularizer.backslash.update(dict(enabled=True, lam=3.0, nu=1.0))
  c.train.steps = 10
  model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
  before = {k: np.asarray(v) for k, v in nnx.to_pure_dict(nnx.state(model, nnx.Param)).items()}
  metrics = backslash_rule.make(c).after_update(model, 0)
  after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  n = 8 * 4 + 4
  assert float(metrics["backslash/nu_hat"]) == 1.0
  np.testing.assert_allclose(after["kernel"], before["kernel"] - 3.0 / n * np.sign(before["kernel"]), rtol=1e-6)


def test_stored_tree_decodes_to_the_format_values_and_fake_quant_passes_gradients():
  params = {"w": jax.random.normal(jax.random.key(0), (32, 16)) * 0.05, "scale": jnp.ones(16)}
  for fmt in numerics.FORMATS:
    stored = quantized.encode_tree(params, fmt)
    assert stored["w"]["codes"].dtype == jnp.uint8 and stored["w"]["shift"].dtype == jnp.int8
    assert stored["scale"] is params["scale"]
    decoded = quantized.decode_tree(stored, fmt, jnp.float32)
    codes, shift = numerics.encode(params["w"], fmt)
    np.testing.assert_array_equal(decoded["w"], numerics.decode(codes, shift, fmt))
    cfg = ConfigDict(dict(weight_format="float", fake_quant=fmt, param_dtype="float32"))
    faked = quantized.float_params(cfg, params)
    np.testing.assert_array_equal(faked["w"], decoded["w"])
    grad = jax.grad(lambda p: jnp.sum(quantized.float_params(cfg, p)["w"] * 3.0))(params)
    np.testing.assert_array_equal(grad["w"], 3.0)
  default = ConfigDict(dict(weight_format="float", fake_quant="none", param_dtype="float32"))
  assert quantized.float_params(default, params) is params


@pytest.fixture(scope="module")
def backslash_run(tmp_path_factory):
  """Tiny GG-init run, BackSlash (20× the default λ) on for the first half of 8 steps."""
  workdir = tmp_path_factory.mktemp("gg") / "bs"
  run_cli(*TINY, "--workdir", workdir, "--config.train.steps=8", "--config.eval.every_steps=4",
          "--config.model.init=gg", "--config.regularizer.backslash.enabled=True",
          "--config.regularizer.backslash.lam=50.0", "--config.regularizer.backslash.end_fraction=0.5",
          "--config.sample.max_new_tokens=1")
  return workdir


def test_backslash_runs_after_the_update_logs_its_metrics_and_stops_at_end_fraction(backslash_run):
  nu = {s: v[0] for s, v in tb_scalars(backslash_run, "train/backslash/nu_hat").items()}
  active = {s: v[0] for s, v in tb_scalars(backslash_run, "train/backslash/active").items()}
  shrink = tb_scalars(backslash_run, "train/backslash/shrink")
  assert active == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 0.0, 6: 0.0, 7: 0.0, 8: 0.0}
  assert nu[4] < nu[1]  # the rate step sharpens the weight distribution
  n_params = 147776  # tiny decoder: 384×64 tied embedding + 2 blocks
  assert shrink[1][0] == pytest.approx(50.0 * nu[1] / n_params, rel=1e-5)
  summary = json.loads((backslash_run / "summary.json").read_text())
  for key in ("nu_hat", "entropy_bits", "expgolomb_bits", "sparsity"):
    assert key in summary, key
  assert sorted(tb_scalars(backslash_run, "weights/entropy_bits")) == [4, 8]
  assert sorted(tb_scalars(backslash_run, "weights/nu_hat/blocks/0/mlp/up")) == [4, 8]
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(backslash_run / "tb"), {event_accumulator.HISTOGRAMS: 0})
  acc.Reload()
  assert "weights/blocks/1/mlp/down" in acc.Tags()["histograms"]


def test_quantize_rf8_then_eval_reads_the_codes(backslash_run, tmp_path):
  out = tmp_path / "bs_rf8"
  line = json.loads(transform("quantize", "--workdir", backslash_run, "--format", "rf8", "--out", out).stdout)
  evaluated = json.loads(run_cli("eval", "--workdir", out).stdout)
  assert evaluated["eval_loss"] == pytest.approx(line["eval_loss"], rel=1e-6)
  assert evaluated["eval_loss"] == pytest.approx(line["source_eval_loss"], rel=0.05)
  summary = json.loads((out / "summary.json").read_text())
  assert json.loads((out / "config.json").read_text())["model"]["weight_format"] == "rf8"
  # 8-bit codes vs the same params saved in fp32; fixed metadata (~13 KB) keeps a 148k-param model below 4×.
  assert summary["size_ratio"] > 3.5 and summary["relative_rmse"] < 0.06
  assert tb_scalars(out, "quantize/relative_rmse")
  before = {p: p.stat().st_mtime_ns for p in backslash_run.rglob("*")}
  again = transform("quantize", "--workdir", backslash_run, "--format", "rf8", "--out", out, check=False)
  assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
  bad = transform("quantize", "--workdir", backslash_run, "--format", "fp4", "--out", tmp_path / "x", check=False)
  assert bad.returncode == 2 and "unknown number format 'fp4'" in bad.stderr
  assert not (tmp_path / "x").exists()
  requantize = transform("deepshape", "--workdir", out, "--out", tmp_path / "y", check=False)
  assert requantize.returncode == 2 and "holds rf8 codes, not float weights" in requantize.stderr
  assert {p: p.stat().st_mtime_ns for p in backslash_run.rglob("*")} == before


@pytest.mark.slow
def test_deepshape_then_init_from_fine_tune(backslash_run, tmp_path):
  out = tmp_path / "bs_ds"
  transform("deepshape", "--workdir", backslash_run, "--out", out)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["after"]["entropy_bits"] < summary["before"]["entropy_bits"]
  assert summary["deepshape"]["nu_target"] == pytest.approx(0.8 * summary["deepshape"]["nu"])
  run_cli(*TINY, "--workdir", tmp_path / "ft", "--init-from", out, "--config.train.steps=4",
          "--config.model.init=gg", "--config.sample.max_new_tokens=1")
  first = tb_scalars(tmp_path / "ft", "train/loss")[1][0]
  assert first == pytest.approx(summary["eval_loss"], abs=0.5)  # starts from the reshaped params


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_quantize_minifloats(backslash_run, tmp_path, fmt):
  line = json.loads(transform("quantize", "--workdir", backslash_run, "--format", fmt,
                              "--out", tmp_path / fmt).stdout)
  assert line["eval_loss"] == pytest.approx(line["source_eval_loss"], rel=0.05)


@pytest.mark.slow
def test_fake_quant_training_runs_and_learns(tmp_path):
  run_cli(*TINY, "--workdir", tmp_path / "qat", "--config.train.steps=6", "--config.model.fake_quant=rf8",
          "--config.sample.max_new_tokens=1")
  losses = tb_scalars(tmp_path / "qat", "train/loss")
  assert losses[6][0] < losses[1][0] - 0.5
