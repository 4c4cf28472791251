"""jepa_ehr.md acceptance checks 1 and 2 on a prepared directory (the rest of both live in tests/data/test_meds.py:
golden subject, train-only and deterministic fit, bad shards, the MIMIC demo's vocabulary size): static codes only
in the prefix, times non-decreasing, and every subject's token stream decodes back to the (time, code, decile bin)
of its first 100 events read straight from the MEDS parquet."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tessera.data import array_record_io
from tessera.data import meds_synth
from tessera.data import prepare_meds
from tessera.data import prepared as prepared_lib


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("tok")
  meds_dir = meds_synth.write_dataset(root / "meds", num_subjects=30, seed=11)
  prepare_meds.prepare(["--input", str(meds_dir), "--out", str(root / "out")])
  return meds_dir, root / "out"


def streams(out):
  stats = json.loads((out / "stats.json").read_text())
  index = pq.read_table(out / prepared_lib.RECORDS_FILE).to_pydict()
  sources = {split: array_record_io.open_source(out, s["shards"]) for split, s in stats["splits"].items()}
  for subject, split, record in zip(index["subject_id"], index["split"], index["record"]):
    data = sources[split][record]
    yield subject, array_record_io.decode_tokens(data, True), array_record_io.decode_times(data)


def test_static_codes_only_in_the_prefix_and_times_never_go_back(dirs):
  _, out = dirs
  tok = prepared_lib.load_tokenizer(out, json.loads((out / "stats.json").read_text()))
  for _, tokens, times in streams(out):
    names = [tok.tokens[i] for i in tokens]
    age = next(i for i, n in enumerate(names) if n.startswith("AGE//"))
    assert names[0] == "<bos>" and all(n.startswith("GENDER//") for n in names[1:age])
    assert not any(n.startswith(("GENDER//", "AGE//", "<bos>")) for n in names[age + 1:])
    assert np.all(np.diff(times) >= 0)


def test_token_stream_round_trips_to_time_code_bin(dirs):
  meds_dir, out = dirs
  tok = prepared_lib.load_tokenizer(out, json.loads((out / "stats.json").read_text()))
  table = pq.read_table(meds_dir / "data")
  rows = table.set_column(1, "time", table.column("time").cast("int64")).to_pydict()
  edges = tok.vocab["value_edges"]
  checked = 0
  for subject, tokens, times in streams(out):
    expected = sorted((t, c, np.nan if v is None else v)
                      for s, t, c, v in zip(rows["subject_id"], rows["time"], rows["code"], rows["numeric_value"])
                      if s == subject and t is not None and c != "MEDS_BIRTH")
    expected = [(t, tok.tokens[tok.code_id(c)], None if np.isnan(v) or c not in edges else
                 int(np.searchsorted(edges[c], v, side="right")) + 1) for t, c, v in expected]
    decoded, names = [], [tok.tokens[i] for i in tokens]
    for i, name in enumerate(names):
      if name.startswith(("<", "GENDER//", "AGE//", "DT//")) or (name[0] == "Q" and name[1:].isdigit()):
        continue
      value = names[i + 1] if names[i + 1][0] == "Q" and names[i + 1][1:].isdigit() else None
      decoded.append((int(times[i]), name, int(value[1:]) if value else None))
    assert expected and decoded[:100] == expected[:100], subject
    checked += 1
  assert checked == 30
