"""The `text` EHR tokenizer (jepa_ehr.md §4.3): the exact serialization of a hand-made subject, token times = the
day of the block (never leaking a later event of the day), train-only and deterministic BPE fitting, and the cut
sampler / node windows on a text-prepared synthetic set."""
import json

import numpy as np
import pytest

from tessera.data import array_record_io
from tessera.data import ehr_cuts
from tessera.data import meds_synth
from tessera.data import meds_text
from tessera.data import prepare_meds
from tessera.data import prepared as prepared_lib
from tessera.data.prepare_io import DataError
from meds_testing import events as _events, us as _us

HOUR = 3_600_000_000
CTX, FUT, HORIZON_DAYS = 40, 16, 90.0


DAY1, DAY3 = _us(2100, 1, 1, 8), _us(2100, 1, 3, 10)
ROWS = [(7, None, "GENDER//F", None), (7, _us(1980, 5, 6), "MEDS_BIRTH", None),
        (7, DAY1, "LAB//50912//mg/dL", 1.0), (7, DAY1, "HOSPITAL_ADMISSION//EW//ER", None),
        (7, DAY1, "DIAGNOSIS//ICD//10//I10", None),
        (7, DAY1 + HOUR, "MEDICATION//Aspirin", None), (7, DAY1 + HOUR, "LAB//50912//mg/dL", 1.234),
        (7, DAY1 + HOUR, "LAB//X", None), (7, DAY1 + 2 * HOUR, "LAB//X", 2.0),
        *[(7, DAY1 + 4 * HOUR, "LAB//50912//mg/dL", v) for v in (6.0, 3.0, 5.0, 4.0)],
        (7, DAY1 + 4 * HOUR, "MEDICATION//Aspirin", None),
        (7, DAY3, "NOTE//discharge", None), (7, DAY3, "MEDS_DEATH", None), (7, DAY3, "PROCEDURE//X", None)]
EXPECTED = """Birth: 1980-05-06
GENDER//F
[2100-01-01]
DIAGNOSIS//ICD//10//I10
HOSPITAL_ADMISSION//EW//ER
LAB//50912//mg/dL: 1.23, 3.00, 4.00, 5.00, 6.00
LAB//X: 2.00
MEDICATION//Aspirin
[2100-01-03]
PROCEDURE//X
MEDS_DEATH
NOTE//discharge
"""


def test_hand_made_subject_serializes_to_the_exact_text():
  serializer = meds_text.Serializer(_events(ROWS))
  assert serializer.text(7) == EXPECTED  # categories in order, 5 most recent values, duplicates gone
  units = np.asarray([("mg/dL" if r[2].startswith("LAB//5") else None) for r in ROWS], dtype=object)
  with_units = meds_text.Serializer(_events(ROWS), units).text(7)
  assert "LAB//50912//mg/dL (mg/dL): 1.23, 3.00, 4.00, 5.00, 6.00\nLAB//X: 2.00\n" in with_units
  assert [meds_text.category_of(c) for c in ("LAB//1", "DIAGNOSIS//x", "MEDICATION//y", "PROCEDURE//z",
                                             "MEDS_DEATH", "TRANSFER_TO//icu", "GENDER//F")] == [
      "measurements", "conditions", "drugs", "procedures", "death", "observations", "demographics"]


def test_token_times_are_the_day_of_the_block_and_never_leak_a_later_event():
  serializer = meds_text.Serializer(_events(ROWS))
  tok = meds_text.MedsTextTokenizer(meds_text.fit(serializer, [7], 320))
  tokens, times = meds_text.SubjectTextTokenizer(tok, serializer).subject(7)
  prefix = tok.prefix_length(tokens)
  assert tokens[0] == tok.bos_id and tokens[prefix - 1] == tok.timeline_id and tokens[-1] == tok.eos_id
  assert tok.decode(tokens[1:prefix - 1]) == "Birth: 1980-05-06\nGENDER//F\n"
  assert np.all(times[:prefix] == DAY1)  # the prefix carries the first event time
  day1_end = DAY1 + 4 * HOUR  # a day block's time: its last event
  body, body_times = tokens[prefix:-1], times[prefix:-1]
  assert set(body_times.tolist()) == {day1_end, DAY3} and np.all(np.diff(body_times) >= 0)
  assert tok.decode(body[body_times == day1_end]) == EXPECTED[EXPECTED.index("[2100-01-01]"):
                                                               EXPECTED.index("[2100-01-03]")]
  assert tok.decode(body[body_times == DAY3]) == EXPECTED[EXPECTED.index("[2100-01-03]"):]
  for node in (DAY1, DAY1 + HOUR, day1_end - 1):  # inside day 1: its later events must not show
    assert not (body_times <= node).any()
  assert (body_times <= day1_end).sum() == (body_times == day1_end).sum()


def test_fit_uses_the_train_split_only_and_is_deterministic():
  rows = [r for r in ROWS if r[2] != "MEDS_DEATH"]
  held_out = [(9, DAY1 + i * HOUR, f"LAB//HELDOUT{i % 3}", float(i)) for i in range(40)]
  both, train_only = meds_text.Serializer(_events(rows + held_out)), meds_text.Serializer(_events(rows))
  fitted = meds_text.fit(both, np.asarray([7]), 400).to_str()
  assert fitted == meds_text.fit(both, np.asarray([7]), 400).to_str()
  assert fitted == meds_text.fit(train_only, np.asarray([7]), 400).to_str()  # held-out text changes nothing
  assert not any("HELD" in token for token in json.loads(fitted)["model"]["vocab"])


@pytest.fixture(scope="module")
def text_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("meds_text")
  meds = meds_synth.write_dataset(root / "meds", num_subjects=40, seed=5)
  for out in ("a", "b"):
    prepare_meds.prepare(["--input", str(meds), "--out", str(root / out), "--tokenizer", "text",
                          "--text-vocab-size", "600"])
  return meds, root


def test_prepare_text_is_bit_identical_and_its_fingerprint_names_the_tokenizer(text_dirs, capsys):
  meds, root = text_dirs
  stats = json.loads((root / "a" / "stats.json").read_text())
  assert stats["tokenizer"] == "text" and stats["text_vocab_size"] == 600 and stats["vocab_size"] <= 600
  files = sorted(p.name for p in (root / "a").iterdir() if p.is_file() and p.name != "stats.json")
  assert "tokenizer.json" in files and "vocab.json" not in files
  for name in files:
    assert (root / "a" / name).read_bytes() == (root / "b" / name).read_bytes(), name
  assert prepared_lib.load_tokenizer(root / "a", stats).vocab_size == stats["vocab_size"]
  with pytest.raises(DataError, match="already holds a different prepared dataset"):
    prepare_meds.prepare(["--input", str(meds), "--out", str(root / "a")])  # codes != text: no silent reuse
  prepare_meds.prepare(["--input", str(meds), "--out", str(root / "a"), "--tokenizer", "text",
                        "--text-vocab-size", "600"])
  assert "nothing to do" in capsys.readouterr().out


def test_cut_windows_and_node_windows_on_text_records(text_dirs):
  _, root = text_dirs
  p = ehr_cuts.CutPointPipeline(root / "a", ctx_len=CTX, fut_len=FUT, horizon_days=HORIZON_DAYS,
                                min_ctx_events=16, global_batch_size=4, seed=0, prefetch=0)
  rows, tok = p.rows("train"), p.tokenizer
  assert p.train
  for index in range(30):
    tokens, cut_idx, last_idx = rows(index)
    rng = np.random.default_rng([0, 0, index])
    subject = p.train[int(rng.integers(len(p.train)))]
    k = int(rng.integers(len(subject.cut_times)))
    record = p.source("train")[subject.index]
    all_tokens, times = array_record_io.decode_tokens(record, True), array_record_io.decode_times(record)
    assert all_tokens[subject.prefix - 1] == tok.timeline_id  # the demographics block is the kept prefix
    np.testing.assert_array_equal(tokens[:subject.prefix], all_tokens[:subject.prefix])
    t_c, ctx_end = subject.cut_times[k], subject.ctx_end[k]
    n_ctx = cut_idx + 1
    assert np.all(times[ctx_end - (n_ctx - subject.prefix):ctx_end] <= t_c) and times[ctx_end] > t_c
    n_fut = last_idx - cut_idx
    np.testing.assert_array_equal(tokens[n_ctx:last_idx + 1], all_tokens[ctx_end:ctx_end + n_fut])
    future = times[ctx_end:ctx_end + n_fut]
    assert np.all(future > t_c) and np.all(future <= t_c + HORIZON_DAYS * ehr_cuts.DAY_US)
  windows = ehr_cuts.NodeWindows(root / "a", CTX)
  subject_id = next(s for s, (split, _) in windows.record_of.items() if split == "train")
  record = p.source("train")[windows.record_of[subject_id][1]]
  tokens, times = array_record_io.decode_tokens(record, True), array_record_io.decode_times(record)
  prefix = ehr_cuts.prefix_length(tokens, windows.tokenizer)
  node = int(np.unique(times[prefix:])[3]) + HOUR  # between two day blocks
  _, _, context = windows.window(subject_id, node)
  upto = prefix + int(np.searchsorted(times[prefix:-1], node, side="right"))
  np.testing.assert_array_equal(context, tokens[:upto])
  text = windows.tokenizer.decode(context[prefix:])
  assert text.endswith("\n") and all(d <= str(np.datetime64(node, "us"))[:10]
                                     for d in (line[1:11] for line in text.splitlines() if line.startswith("[")))
