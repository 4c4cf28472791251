"""Prepared tokenizer directories name bos/eos/pad/unk (pad != eos) and load in transformers when it is installed."""
import json

import numpy as np
import pytest

from tessera.data import prepare_text, text_tokenizer

DOCS = [f"Document {i}: the quick brown fox jumps over {i} lazy dogs.\n" for i in range(16)]


@pytest.fixture(scope="module", params=["bpe", "bytes"])
def prepared(request, tmp_path_factory):
  tmp = tmp_path_factory.mktemp(request.param)
  (tmp / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
  stats = prepare_text.prepare(["--input", str(tmp / "docs.jsonl"), "--out", str(tmp / "out"), "--tokenizer",
                                request.param, "--vocab-size", "300" if request.param == "bpe" else "260"])
  return tmp / "out", stats


def test_special_tokens_named_and_pad_is_not_eos(prepared):
  out, stats = prepared
  config = json.loads((out / "tokenizer_config.json").read_text())
  assert {config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")} == {
      "<bos>", "<eos>", "<pad>", "<unk>"}
  tokenizer = text_tokenizer.TextTokenizer.from_file(out / "tokenizer.json")
  assert stats["pad_id"] == tokenizer.pad_id != stats["eos_id"] == tokenizer.eos_id
  assert stats["vocab_size"] == tokenizer.vocab_size
  assert json.loads((out / "special_tokens_map.json").read_text())["pad_token"] == "<pad>"


def test_user_tokenizer_keeps_its_own_special_tokens():
  import tokenizers
  hf = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, "</s>": 1, "a": 2}, unk_token="[UNK]"))
  hf.add_special_tokens(["</s>"])
  assert text_tokenizer.with_special_tokens(hf) == {"eos_token": "</s>", "pad_token": "<pad>", "bos_token": "<bos>",
                                                    "unk_token": "[UNK]"}
  assert hf.token_to_id("<pad>") == 3 and hf.token_to_id("<bos>") == 4  # after the vocabulary: ids keep meaning


def test_transformers_auto_tokenizer_loads_it(prepared):
  transformers = pytest.importorskip("transformers")
  out, stats = prepared
  hf = transformers.AutoTokenizer.from_pretrained(str(out))
  assert (hf.bos_token, hf.eos_token, hf.pad_token, hf.unk_token) == ("<bos>", "<eos>", "<pad>", "<unk>")
  assert hf.pad_token_id == stats["pad_id"] != hf.eos_token_id == stats["eos_id"]
  ours = text_tokenizer.TextTokenizer.from_file(out / "tokenizer.json")
  text = "the quick brown fox 🙂"
  np.testing.assert_array_equal(hf(text, add_special_tokens=False)["input_ids"], ours.encode(text))
  assert hf.decode(ours.encode(text)) == text
  batch = hf([text, "a"], padding=True)["input_ids"]
  assert batch[1][-1] == stats["pad_id"]
