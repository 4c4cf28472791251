"""Export then import reproduces every parameter bit for bit (a plain decoder and a Qwen3-style config), and a
Hugging Face bfloat16 folder survives import then export byte for byte."""
import json

import jax
import ml_dtypes  # noqa: F401  (registers bfloat16 for safetensors' numpy reader)
import numpy as np
import pytest
from safetensors.numpy import load_file

import hf_helpers
from tessera.configs import defaults
from tessera.models import hf_names
from tessera.trainer import config_loader
from tessera.trainer import inspect_run
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import state as state_lib
from tessera.trainer import workdir as workdir_lib

import_hf = hf_helpers.import_script("import_hf")
export_hf = hf_helpers.import_script("export_hf")

MODELS = {
    # scanned blocks (stacked params, unstacked on export), GQA, untied
    "decoder": dict(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                    tie_embeddings=False, scan_layers=True),
    "qwen3": dict(vocab_size=320, d_model=32, n_layers=2, n_heads=4, n_kv_heads=1, head_dim=16, d_ff=48,
                  tie_embeddings=True, qk_norm=True, attn_bias=True, rope_scaling="llama3", rope_factor=8.0,
                  rope_original_max_len=16),
}


def tessera_run(workdir, model, prepared, edit=None):
  """A step-0 run of `model` with every param random (norm scales and biases too, so each one is checked)."""
  c = defaults.base_config()
  c.model.update(model)
  if edit is not None:
    edit(c)
  c.data.path = str(prepared)
  factory = state_lib.StateFactory(c, mesh_lib.make_mesh(c))
  state = factory.init(0)
  params = factory.all_params(state["params"], state["frozen"])
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = jax.tree.unflatten(tree, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
  inspect_run.save_params(workdir, factory, 0, params)
  workdir_lib.write_json(workdir / "config.json", config_loader.to_dict(c))
  return params


def flat(params):
  return {hf_names.path_name(p): np.asarray(x) for p, x in export_hf.flat_params(params).items()}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_export_import_bit_for_bit(tmp_path, prepared, name):
  source = tessera_run(tmp_path / "run", MODELS[name], prepared)
  assert export_hf.main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
  hf = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert hf["architectures"] == ["Qwen3ForCausalLM" if name == "qwen3" else "LlamaForCausalLM"]
  assert (tmp_path / "hf" / "tokenizer.json").exists()
  assert import_hf.main(["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "back"), "--data", str(prepared),
                         "--params-only"]) == 0
  config, _, back, _, _ = inspect_run.load(tmp_path / "back")
  for key, value in MODELS[name].items():
    if key != "scan_layers":
      assert config.model[key] == value, key
  source_flat, back_flat = flat(source), flat(back)
  assert sorted(source_flat) == sorted(back_flat)
  for path, array in source_flat.items():
    assert back_flat[path].dtype == array.dtype and np.array_equal(back_flat[path].view(np.uint32),
                                                                   array.view(np.uint32)), path


def test_hf_folder_survives_import_export(tmp_path, prepared):
  """bfloat16 in, float32 run (exact), bfloat16 out: the same bytes, the same config fields."""
  cfg = hf_helpers.QWEN3
  hf_helpers.write_hf_folder(tmp_path / "hf", cfg, dtype="bfloat16", shards=2)
  assert import_hf.main(["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "run"), "--data", str(prepared),
                         "--params-only"]) == 0
  assert export_hf.main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--dtype",
                         "bfloat16", "--shard-mb", "0"]) == 0
  original, exported = {}, {}
  for folder, tensors in ((tmp_path / "hf", original), (tmp_path / "out", exported)):
    for file in folder.glob("model*.safetensors"):
      tensors.update(load_file(str(file)))
  assert sorted(original) == sorted(exported)
  for name, array in original.items():
    assert exported[name].dtype == array.dtype and np.array_equal(exported[name].view(np.uint16),
                                                                  array.view(np.uint16)), name
  assert (tmp_path / "out" / "model.safetensors.index.json").exists()
  out_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
  for key, value in cfg.items():
    assert out_cfg[key] == value, key
  assert (tmp_path / "out" / "tokenizer_config.json").read_text() == (tmp_path / "hf" /
                                                                       "tokenizer_config.json").read_text()


def test_trimkv_gates_go_to_their_own_file(tmp_path, prepared):
  """A TRIM-KV run exports its base decoder as HF tensors and its retention gates as trimkv_extra.safetensors."""
  from tessera.configs import trimkv as trimkv_config

  def as_trimkv(c):
    trimkv_config.add_model_keys(c, gate_hidden=8)
    trimkv_config.add_loss_keys(c)
  source = flat(tessera_run(tmp_path / "run", MODELS["qwen3"], prepared, as_trimkv))
  assert export_hf.main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
  extra = load_file(str(tmp_path / "hf" / "trimkv_extra.safetensors"))
  assert extra and all("retention_gate" in name for name in extra)
  for name, array in extra.items():
    assert np.array_equal(array, source[name]), name
  assert len(load_file(str(tmp_path / "hf" / "model.safetensors"))) == len(source) - len(extra)
