"""MEDS: golden tokenization, train-only fitting, labels without leakage, bad input, the synthetic generator and
the real MIMIC-IV demo (when ../shared/data is present)."""

import json
import pathlib
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tessera.data import array_record_io
from tessera.data import meds_labels
from tessera.data import meds_schema
from tessera.data import meds_synth
from tessera.data import meds_tokenize
from tessera.data import prepare_meds
from tessera.data import prepared
from meds_testing import events as _events, us as _us

MIMIC = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "mimic-iv-demo-meds"


def test_hand_built_subject_gives_the_golden_token_sequence():
  t0 = _us(2040, 1, 1)
  rows = [(7, t0 + 7_200_000_000, "LAB//A", 9.5), (7, None, "GENDER//F", None),
          (7, _us(1985, 6, 1), "MEDS_BIRTH", None),
          (7, t0, "LAB//A", 3.5), (7, t0, "ADMIT", None), (7, t0 + 30_000_000, "LAB//Z", 1.0),
          (7, t0 + 7_200_000_000 + 2 * 86_400_000_000, "LAB//A", None)]
  tokens = list(meds_tokenize.SPECIALS) + list(meds_tokenize.Q_TOKENS) + [
      f"DT//{n}" for n, _ in meds_tokenize.DT_EDGES] + list(meds_tokenize.AGE_TOKENS) + [
      "GENDER//F", "LAB//<UNK>", "ADMIT", "LAB//A"]
  tokenizer = meds_tokenize.EventTokenizer({"tokens": tokens, "value_edges": {"LAB//A": list(range(1, 10))}})
  ids, times = meds_tokenize.SubjectTokenizer(tokenizer, _events(rows)).subject(7)
  assert tokenizer.decode(ids).split(" | ") == [
      "<bos>", "GENDER//F", "AGE//[50,55)", "ADMIT", "LAB//A", "Q4",  # t0, events sorted by code
      "LAB//<UNK>",  # +30 s: same cluster, no DT; a code outside the vocabulary goes to its prefix UNK
      "DT//1h", "LAB//A", "Q10",  # +2 h from t0 (1 h 59.5 min after the last timestamp)
      "DT//2d", "LAB//A", "<eos>"]  # +2 d, no value
  hour, day = 3_600_000_000, 86_400_000_000
  np.testing.assert_array_equal(times, [t0] * 6 + [t0 + 30_000_000] + [t0 + 2 * hour] * 3 +
                                [t0 + 2 * hour + 2 * day] * 3)


def test_fit_uses_train_only_and_is_deterministic():
  t = _us(2050, 1, 1)
  rows = [(s, t + i * 60_000_000, "LAB//K", float(i)) for s in (1, 2) for i in range(15)]
  rows += [(1, t, "LAB//RARE1", None), (2, t, "LAB//RARE2", None), (1, t, "DX//ONE", None)]
  rows += [(3, t, "LAB//HELDOUT", None), (3, t, "NEW", None), (3, None, "GENDER//X", None)]
  events = _events(rows)
  vocab = meds_tokenize.fit(events, events.subject_id != 3, min_subjects=2)
  assert json.dumps(vocab) == json.dumps(meds_tokenize.fit(events, events.subject_id != 3, min_subjects=2))
  tokenizer = meds_tokenize.EventTokenizer(vocab)
  specials = len(meds_tokenize.SPECIALS) + 10 + len(meds_tokenize.DT_EDGES) + len(meds_tokenize.AGE_TOKENS)
  assert vocab["tokens"][specials:] == ["LAB//<UNK>", "LAB//K"]  # DX//ONE: rare, and its prefix too
  assert tokenizer.decode([tokenizer.code_id(c) for c in ("LAB//HELDOUT", "DX//ONE", "NEW", "GENDER//X")]) == (
      "LAB//<UNK> | <unk> | <unk> | <unk>")
  edges = vocab["value_edges"]["LAB//K"]
  assert len(edges) == 9 and np.all(np.diff(edges) >= 0)
  np.testing.assert_allclose(edges, np.quantile(np.repeat(np.arange(15.0), 2), np.arange(1, 10) / 10))


def test_labels_never_count_events_at_or_before_the_prediction_time():
  hour, day = 3_600_000_000, 86_400_000_000
  a, d = 100 * day, 110 * day
  empty = np.zeros(0, np.int64)
  base = {meds_labels.ADMISSION: np.array([a, d + 30 * day]), meds_labels.DISCHARGE: np.array([d, d + 31 * day]),
          meds_labels.ICU: np.array([a + 12 * hour]), meds_labels.DEATH: empty}
  labels = meds_labels.subject_labels(base)
  assert labels["icu_admission"] == [(a + 24 * hour, False), (d + 30 * day + 24 * hour, False)]
  assert labels["readmission_30d"][0] == (d, True) and labels["long_length_of_stay"][0] == (a + 24 * hour, True)
  later_icu = dict(base, **{meds_labels.ICU: np.array([a + 25 * hour])})
  assert meds_labels.subject_labels(later_icu)["icu_admission"][0] == (a + 24 * hour, True)
  died_at_node = dict(base, **{meds_labels.DEATH: np.array([a + 24 * hour])})
  assert meds_labels.subject_labels(died_at_node)["in_hospital_mortality"] == []
  died_after = dict(base, **{meds_labels.DEATH: np.array([d + hour])})
  assert meds_labels.subject_labels(died_after)["in_hospital_mortality"] == [(a + 24 * hour, True)]
  readmit_at_discharge = dict(base, **{meds_labels.ADMISSION: np.array([a, d])})
  assert meds_labels.subject_labels(readmit_at_discharge)["readmission_30d"] == [(d, False)]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
  return meds_synth.write_dataset(tmp_path_factory.mktemp("synth") / "meds", num_subjects=30, seed=3)


def test_synthetic_generator_is_deterministic_with_planted_labels(synth_dir, tmp_path):
  again = meds_synth.write_dataset(tmp_path / "again", num_subjects=30, seed=3)
  for path in sorted(synth_dir.rglob("*.parquet")):
    assert pq.read_table(path).equals(pq.read_table(again / path.relative_to(synth_dir))), path
  slope = pq.read_table(synth_dir / "labels" / "long_term_slope.parquet").to_pydict()
  assert 30 <= len(slope["subject_id"]) <= 90 and 0 < sum(slope["boolean_value"]) < len(slope["boolean_value"])
  data = pq.read_table(synth_dir / "data" / "train" / "0.parquet").to_pydict()
  assert set(data) == {"subject_id", "time", "code", "numeric_value"} and "LAB//A" in data["code"]


def _mixed_shards(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  """The same dataset re-laid out as 2 shards that mix splits (subjects alternate)."""
  shutil.copytree(src / "metadata", dst / "metadata")
  shutil.copytree(src / "labels", dst / "labels")
  table = pa.concat_tables([pq.read_table(p) for p in sorted((src / "data").rglob("*.parquet"))])
  subjects = np.unique(table.column("subject_id").to_numpy())
  (dst / "data" / "x").mkdir(parents=True)
  for shard in (0, 1):
    keep = np.isin(table.column("subject_id").to_numpy(), subjects[shard::2])
    pq.write_table(table.filter(pa.array(keep)), dst / "data" / ("x" if shard else "") / f"{shard}.parquet")
  return dst


def test_prepare_meds_takes_splits_from_the_split_file(synth_dir, tmp_path):
  meds_dir = _mixed_shards(synth_dir, tmp_path / "mixed")
  stats = prepare_meds.prepare(["--input", str(meds_dir), "--out", str(tmp_path / "out")])
  assert {k: v["subjects"] for k, v in stats["splits"].items()} == {"train": 24, "tuning": 3, "held_out": 3}
  records = pq.read_table(tmp_path / "out" / "records.parquet").to_pydict()
  splits = dict(zip(*pq.read_table(meds_dir / meds_schema.SPLITS_FILE).to_pydict().values()))
  assert all(splits[s] == split for s, split in zip(records["subject_id"], records["split"]))
  source = array_record_io.open_source(tmp_path / "out", stats["splits"]["train"]["shards"])
  tokens = array_record_io.decode_tokens(source[0], with_times=True)
  assert tokens[0] == 1 and tokens[-1] == 2 and len(tokens) == records["num_tokens"][0]
  assert (np.diff(array_record_io.decode_times(source[0])) >= 0).all()
  assert set(stats["labels"]) == {"short_term", "long_term_slope", "death_1y"}  # MIMIC tasks skipped: no codes
  pipeline = prepared.PreparedPipeline(tmp_path / "out", seq_len=64, global_batch_size=4, seed=0)
  batch = next(pipeline.train_batches(0, slice(None)))
  assert batch["inputs"].shape == (4, 64) and pipeline.vocab_size == stats["vocab_size"]


def _broken(synth_dir, tmp_path, edit):
  meds_dir = tmp_path / "broken"
  shutil.copytree(synth_dir, meds_dir)
  edit(meds_dir)
  return meds_dir


def _edit_shard(transform):
  def edit(meds_dir):
    path = meds_dir / "data" / "train" / "0.parquet"
    pq.write_table(transform(pq.read_table(path)), path)
  return edit


def _set_column(name, fn):
  return _edit_shard(lambda t: t.set_column(t.schema.get_field_index(name), name, fn(t.column(name))))


@pytest.mark.parametrize("edit, message", [
    (_edit_shard(lambda t: t.drop_columns(["code"])), "train/0.parquet: column 'code' missing"),
    (_set_column("time", lambda c: c.cast(pa.string())), "train/0.parquet: column 'time' has type string"),
    (_set_column("subject_id", lambda c: pa.array([None] + c.to_pylist()[1:], pa.int64())),
     "train/0.parquet: column 'subject_id': row 0 is null"),
    (_edit_shard(lambda t: t.take(np.r_[0, 2, 1, np.arange(3, t.num_rows)])),
     "train/0.parquet: column 'time': row 2: subject"),
    (lambda d: pq.write_table(pa.table({"subject_id": pa.array([1, 99999], pa.int64()), "split": ["train"] * 2}),
                              d / meds_schema.SPLITS_FILE),
     "subject_splits.parquet: column 'subject_id': row 0: subject 1 has no events"),
    (_edit_shard(lambda t: t.slice(0, 0)), "subject_splits.parquet: column 'subject_id': row"),
    (lambda d: (d / "data" / "tuning" / "0.parquet").write_bytes(b"not parquet"), "tuning/0.parquet: unreadable"),
])
def test_bad_meds_input_is_one_line_and_leaves_nothing(synth_dir, tmp_path, capsys, edit, message):
  meds_dir = _broken(synth_dir, tmp_path, edit)
  assert prepare_meds.main(["--input", str(meds_dir), "--out", str(tmp_path / "out")]) == 2
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last
  assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_no_events_and_empty_codes_metadata(synth_dir, tmp_path, capsys):
  def empty(meds_dir):
    for path in (meds_dir / "data").rglob("*.parquet"):
      pq.write_table(pq.read_table(path).slice(0, 0), path)
  assert prepare_meds.main(["--input", str(_broken(synth_dir, tmp_path / "a", empty)),
                            "--out", str(tmp_path / "out")]) == 2
  assert "no events in any shard" in capsys.readouterr().err

  def no_codes(meds_dir):
    path = meds_dir / meds_schema.CODES_FILE
    pq.write_table(pq.read_table(path).slice(0, 0), path)
  assert prepare_meds.main(["--input", str(_broken(synth_dir, tmp_path / "b", no_codes)),
                            "--out", str(tmp_path / "ok")]) == 0
  assert "codes.parquet: empty" in capsys.readouterr().err


@pytest.mark.skipif(not MIMIC.is_dir(), reason="../shared/data/mimic-iv-demo-meds not present")
def test_mimic_demo_prepares(tmp_path, capsys):
  """~10 s: the real 916k-event demo, its vocabulary size pinned (§4.2) and every derived task present."""
  assert prepare_meds.main(["--input", str(MIMIC), "--out", str(tmp_path / "mimic")]) == 0
  stats = json.loads((tmp_path / "mimic" / "stats.json").read_text())
  assert stats["vocab_size"] == 3802 and stats["subjects"] == 100 and stats["events"] == 916_166
  assert {k: v["subjects"] for k, v in stats["splits"].items()} == {"train": 80, "tuning": 10, "held_out": 10}
  assert stats["labels"] == sorted(task.name for task in meds_labels.TASKS)
  readmissions = pq.read_table(tmp_path / "mimic" / "labels" / "readmission_30d.parquet")
  assert 40 <= sum(readmissions.column("boolean_value").to_pylist()) <= 60
  assert "prepare_meds: wrote" in capsys.readouterr().out
