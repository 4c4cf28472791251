"""Imported Llama- and Qwen3-style checkpoints compute the architecture's function: logits equal an independent
numpy reference forward (hf_helpers.reference_logits) within 1e-5 in float32."""
import numpy as np
import jax.numpy as jnp
import pytest

import hf_helpers
from tessera.trainer import inspect_run

import_hf = hf_helpers.import_script("import_hf")

CASES = {
    # GQA 4:2, untied, Llama 3 rope scaling, two shards + index, float32
    "llama": (hf_helpers.LLAMA, dict(shards=2)),
    # q/k norm, tied, head_dim 16 != 32/4, one KV head, bfloat16 file
    "qwen3": (hf_helpers.QWEN3, dict(dtype="bfloat16")),
    # attention biases and linear rope scaling
    "llama_bias": ({**hf_helpers.LLAMA, "attention_bias": True,
                    "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, dict()),
}


def imported_logits(tmp_path, prepared, cfg, tokens_T, **write):
  tensors = hf_helpers.write_hf_folder(tmp_path / "hf", cfg, **write)
  assert import_hf.main(["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "run"), "--data", str(prepared),
                         "--params-only"]) == 0
  config, factory, params, step, _ = inspect_run.load(tmp_path / "run")
  assert step == 0
  with factory.context():
    logits_1xTxV = factory.model(params)(jnp.asarray(tokens_T)[None])
  return config, tensors, np.asarray(logits_1xTxV)[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_reference(tmp_path, prepared, case):
  cfg, write = CASES[case]
  tokens_T = np.random.default_rng(1).integers(0, cfg["vocab_size"], 24)
  config, tensors, logits_TxV = imported_logits(tmp_path, prepared, cfg, tokens_T, **write)
  reference_TxV = hf_helpers.reference_logits(cfg, tensors, tokens_T)
  np.testing.assert_allclose(logits_TxV, reference_TxV, atol=1e-5, rtol=0)
  assert config.model.qk_norm == (cfg["model_type"] == "qwen3")
  assert config.model.tie_embeddings == cfg["tie_word_embeddings"]
  if case == "llama":  # the rope scaling is live: without it the reference disagrees (guards the comparison)
    unscaled_TxV = hf_helpers.reference_logits({**cfg, "rope_scaling": None}, tensors, tokens_T)
    assert np.abs(logits_TxV - unscaled_TxV).max() > 1e-3


SHARDED = """
import json, sys
sys.path.insert(0, "tests/hf")
import jax, jax.numpy as jnp, numpy as np
import hf_helpers
import_hf = hf_helpers.import_script("import_hf")
tensors = hf_helpers.write_hf_folder("{out}/hf", hf_helpers.LLAMA)
args = import_hf.parse_args(["--model", "{out}/hf", "--out", "{out}/run", "--data", "{data}", "--fsdp", "2",
                             "--tensor", "2"])
from tessera.trainer import mesh as mesh_lib, state as state_lib
keys = import_hf.hf_config.model_keys(hf_helpers.LLAMA)
config = import_hf.tessera_config(keys, "float32", "{data}", 2, 2)
factory = state_lib.StateFactory(config, mesh_lib.make_mesh(config))
plan = import_hf.check_tensors(config.model, import_hf.weight_files(args.model))
params = import_hf.load_params(factory, plan, np.float32)
q = params["blocks"][0]["attn"]["q"]
tokens = np.arange(16) % 300
with factory.context():
  logits = np.asarray(factory.model(params)(jnp.asarray(tokens)[None]))[0]
ref = hf_helpers.reference_logits(hf_helpers.LLAMA, tensors, tokens)
print(json.dumps({{"q_spec": [str(a) for a in q.sharding.spec], "q_shard": list(q.addressable_shards[0].data.shape),
                  "err": float(np.abs(logits - ref).max())}}))
"""


def test_import_reads_into_a_sharded_mesh(tmp_path, prepared):
  """On 4 devices (fsdp=2, tensor=2) every weight lands in its own sharding, and the function is unchanged."""
  from tessera_testing import run_json_script
  result = run_json_script(SHARDED.format(out=tmp_path, data=prepared), devices=4)
  assert result["q_spec"] == ["fsdp", "tensor", "None"]
  assert result["q_shard"] == [16, 2, 8]  # [D/2, H/2, E] of [32, 4, 8]
  assert result["err"] < 1e-5
