"""prepare_text: sources, tokenizers, the prepared directory, and bad input (one line, exit 2, nothing left behind)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tessera.data import array_record_io
from tessera.data import prepare_text
from tessera.data import prepared
from tessera.data import text_tokenizer

TEXTS = ["héllo ∑ 🙂\n\tdef f(): pass  ", "The quick brown fox.", "", "  leading spaces\r\nand CRLF\n"]


@pytest.mark.parametrize("kind", text_tokenizer.KINDS)
def test_tokenizer_round_trip(kind):
  tokenizer = text_tokenizer.TextTokenizer(text_tokenizer.train(kind, TEXTS * 20, 320))
  for text in TEXTS:
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32 and (ids < tokenizer.vocab_size).all()
    assert tokenizer.decode(np.append(ids, tokenizer.eos_id)) == text
  if kind == "bytes":
    np.testing.assert_array_equal(tokenizer.encode("aé"), [97, 0xC3, 0xA9])
    assert (tokenizer.vocab_size, tokenizer.eos_id) == (257, 256)


def _inputs(tmp_path):
  folder = tmp_path / "docs"
  (folder / "sub").mkdir(parents=True)
  for i in range(12):
    (folder / "sub" / f"{i}.txt").write_text(f"Document {i}: the quick brown fox jumps {i} times. 🙂\n")
  (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": f"json line {i}", "id": i}) for i in range(3)))
  pq.write_table(pa.table({"text": [f"parquet row {i}" for i in range(4)]}), tmp_path / "b.parquet")
  return [str(folder), str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet")]


def test_prepare_writes_records_that_decode_to_the_documents(tmp_path):
  out = tmp_path / "out"
  stats = prepare_text.prepare(["--input", *_inputs(tmp_path), "--out", str(out), "--vocab-size", "320"])
  assert stats["documents"] == 19 and stats["splits"]["validation"]["documents"] >= 1
  assert stats["splits"]["train"]["documents"] + stats["splits"]["validation"]["documents"] == 19
  tokenizer = text_tokenizer.TextTokenizer.from_file(out / "tokenizer.json")
  decoded = []
  for split in ("train", "validation"):
    source = array_record_io.open_source(out, stats["splits"][split]["shards"])
    for i in range(len(source)):
      ids = array_record_io.decode_tokens(source[i], with_times=False)
      assert ids[-1] == tokenizer.eos_id
      decoded.append(tokenizer.decode(ids))
  expected = [f"Document {i}: the quick brown fox jumps {i} times. 🙂\n" for i in range(12)]
  expected += [f"json line {i}" for i in range(3)] + [f"parquet row {i}" for i in range(4)]
  assert sorted(decoded) == sorted(expected)
  assert 1.0 < stats["bytes_per_token"] < 8.0


def test_rerun_is_a_no_op_and_a_different_dataset_is_refused(tmp_path, capsys):
  inputs, out = _inputs(tmp_path), tmp_path / "out"
  assert prepare_text.main(["--input", *inputs, "--out", str(out), "--tokenizer", "bytes"]) == 0
  before = (out / "stats.json").read_text()
  assert prepare_text.main(["--input", *inputs, "--out", str(out), "--tokenizer", "bytes"]) == 0
  assert "nothing to do" in capsys.readouterr().out
  assert prepare_text.main(["--input", inputs[0], "--out", str(out), "--tokenizer", "bytes"]) == 2
  assert "already holds a different prepared dataset" in capsys.readouterr().err
  assert (out / "stats.json").read_text() == before
  assert prepare_text.main(["--input", inputs[0], "--out", str(out), "--tokenizer", "bytes", "--overwrite"]) == 0
  assert json.loads((out / "stats.json").read_text())["documents"] == 12
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"text": "ok"}\n{"txt": "no"}\n', "bad.jsonl: line 2: no 'text' field"),
    ("bad.jsonl", '{"text": "ok"}\n{oops\n', "bad.jsonl: line 2: not valid JSON"),
    ("bad.parquet", pa.table({"body": ["a", "b"]}), "bad.parquet: column 'text' missing"),
    ("bad.parquet", pa.table({"text": ["a", None]}), "bad.parquet: column 'text': row 1 is null"),
    ("bad.txt", b"\xff\xfe binary", "bad.txt: byte 0 is not valid UTF-8"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, name, content, message):
  path = tmp_path / name
  if isinstance(content, pa.Table):
    pq.write_table(content, path)
  else:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
  (tmp_path / "good.txt").write_text("a good document")
  out = tmp_path / "out"
  assert prepare_text.main(["--input", str(tmp_path / "good.txt"), str(path), "--out", str(out)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err[-1:]) == 1 and err[-1].startswith("error: ") and message in err[-1]
  assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_tokenizer_file_is_used_and_checked(tmp_path, capsys):
  tokenizer_file = tmp_path / "tok.json"
  text_tokenizer.train("bytes", [], 0).save(str(tokenizer_file))
  inputs = _inputs(tmp_path)
  args = ["--input", *inputs, "--tokenizer-file", str(tokenizer_file)]
  assert prepare_text.main([*args, "--out", str(tmp_path / "x"), "--vocab-size", "300"]) == 2
  assert "tok.json: has 257 tokens but --vocab-size is 300" in capsys.readouterr().err
  stats = prepare_text.prepare([*args, "--out", str(tmp_path / "out")])
  assert stats["vocab_size"] == 260 and stats["tokenizer"] == "file"  # + <pad>, <bos>, <unk>


def test_pipeline_rejects_a_tokenizer_that_does_not_match_the_data(tmp_path):
  out = tmp_path / "out"
  prepare_text.prepare(["--input", *_inputs(tmp_path), "--out", str(out), "--tokenizer", "bytes"])
  stats = json.loads((out / "stats.json").read_text())
  stats["vocab_size"] = 300
  (out / "stats.json").write_text(json.dumps(stats))
  with pytest.raises(ValueError, match="tokenizer.json: vocabulary size 260 does not match the prepared data's 300"):
    prepared.PreparedPipeline(out, seq_len=16, global_batch_size=2, seed=0)
