"""Against transformers itself (slow; skipped unless `transformers` and `torch` are installed, an optional extra):
the imported model's logits equal AutoModelForCausalLM's, and an exported folder loads with from_pretrained."""
import numpy as np
import jax.numpy as jnp
import pytest

import hf_helpers
from tessera.trainer import inspect_run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import_hf = hf_helpers.import_script("import_hf")
export_hf = hf_helpers.import_script("export_hf")


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [hf_helpers.LLAMA, hf_helpers.QWEN3], ids=["llama", "qwen3"])
def test_logits_match_transformers(tmp_path, prepared, cfg):
  hf_helpers.write_hf_folder(tmp_path / "hf", cfg)
  assert import_hf.main(["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "run"), "--data", str(prepared),
                         "--params-only"]) == 0
  tokens_T = np.random.default_rng(1).integers(0, cfg["vocab_size"], 24)
  config, factory, params, _, _ = inspect_run.load(tmp_path / "run")
  with factory.context():
    ours_TxV = np.asarray(factory.model(params)(jnp.asarray(tokens_T)[None]))[0]
  assert export_hf.main(["--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
  for folder in (tmp_path / "hf", tmp_path / "out"):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    with torch.no_grad():
      theirs_TxV = model(torch.as_tensor(tokens_T)[None]).logits[0].numpy()
    np.testing.assert_allclose(ours_TxV, theirs_TxV, atol=1e-4, rtol=0)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  assert tokenizer.decode(tokenizer("def x")["input_ids"]).endswith("def x")
