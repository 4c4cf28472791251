"""MEDS as the ecosystem writes it (issue 14): prepare_meds validates the input with the `meds` package's schemas and
records them, reads label files from labels/ and from the MEDS task_labels/ layout in the label schema, and skips
built-in MIMIC tasks whose codes are absent. Bad input: one line naming the file and column, exit 2, nothing written."""
import json
import shutil

import meds
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tessera.data import meds_labels
from tessera.data import meds_synth
from tessera.data import prepare_meds


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  return meds_synth.write_dataset(tmp_path_factory.mktemp("meds") / "synth", num_subjects=30, seed=3)


@pytest.fixture(scope="module")
def prepared(synth, tmp_path_factory):
  out = tmp_path_factory.mktemp("prepared") / "out"
  prepare_meds.prepare(["--input", str(synth), "--out", str(out)])
  return out


def copy(synth, tmp_path, edit=None):
  meds_dir = tmp_path / "meds"
  shutil.copytree(synth, meds_dir)
  if edit:
    edit(meds_dir)
  return meds_dir


def test_schemas_recorded_and_task_labels_layout_read(synth, tmp_path, capsys):
  def to_task_labels(meds_dir):
    table = pq.read_table(meds_dir / "labels" / "short_term.parquet")
    (meds_dir / "labels" / "short_term.parquet").unlink()
    for split, part in (("train", table.slice(0, 20)), ("held_out", table.slice(20))):
      (meds_dir / "task_labels" / "short_term" / split).mkdir(parents=True)
      pq.write_table(part, meds_dir / "task_labels" / "short_term" / split / "0.parquet")
    (meds_dir / "task_labels" / "mortality" / "in_icu").mkdir(parents=True)
    pq.write_table(table.slice(0, 5), meds_dir / "task_labels" / "mortality" / "in_icu" / "0.parquet")
    shard = meds_dir / "data" / "train" / "0.parquet"  # int32 ids and large strings conform (MEDS' align casts)
    data = pq.read_table(shard)
    pq.write_table(data.cast(pa.schema([("subject_id", pa.int32()), ("time", pa.timestamp("us")),
                                        ("code", pa.large_string()), ("numeric_value", pa.float64())])), shard)
    return table

  meds_dir = copy(synth, tmp_path, to_task_labels)
  stats = prepare_meds.prepare(["--input", str(meds_dir), "--out", str(tmp_path / "out")])
  assert stats["meds"]["schema_package"] == f"meds {meds.__version__}"
  assert stats["meds"]["dataset"]["dataset_name"] == "tessera-synthetic-meds"
  assert stats["meds"]["codes_metadata_rows"] > 0
  assert stats["labels_from_input"] == ["death_1y", "long_term_slope", "mortality.in_icu", "short_term"]
  original = pq.read_table(synth / "labels" / "short_term.parquet")
  written = pq.read_table(tmp_path / "out" / "labels" / "short_term.parquet")
  order = [("subject_id", "ascending"), ("prediction_time", "ascending")]
  assert written.sort_by(order).equals(original.sort_by(order))  # both split shards, nothing else
  meds.LabelSchema.validate(written)
  assert pq.read_table(tmp_path / "out" / "labels" / "mortality.in_icu.parquet").num_rows == 5
  # The built-in MIMIC tasks need hospital codes the synthetic set lacks: skipped, one line each, recorded.
  assert set(stats["labels_skipped"]) == {task.name for task in meds_labels.TASKS}
  assert "no HOSPITAL_ADMISSION" in stats["labels_skipped"]["readmission_30d"]
  err = capsys.readouterr().err
  assert sum("label readmission_30d: skipped" in line for line in err.splitlines()) == 1


def _label(name, transform):
  def edit(meds_dir):
    path = meds_dir / "labels" / f"{name}.parquet"
    pq.write_table(transform(pq.read_table(path)), path)
  return edit


def _write(relative, table):
  return lambda meds_dir: pq.write_table(table, meds_dir / relative)


@pytest.mark.parametrize("edit, message", [
    (_label("death_1y", lambda t: t.append_column("note", pa.array(["x"] * t.num_rows))),
     "labels/death_1y.parquet: column 'note' is not allowed (MEDS LabelSchema"),
    (_label("death_1y", lambda t: t.set_column(0, "subject_id", pa.array([5] + t.column(0).to_pylist()[1:],
                                                                         pa.int64()))),
     "labels/death_1y.parquet: column 'subject_id': row 0: subject 5 is not in data/"),
    (_label("death_1y", lambda t: t.drop_columns(["boolean_value"]).append_column(
        "float_value", pa.array([1.0] * t.num_rows, pa.float32()))),
     "labels/death_1y.parquet: column 'boolean_value' missing"),
    (_label("death_1y", lambda t: t.set_column(1, "prediction_time", t.column(1).cast(pa.string()))),
     "labels/death_1y.parquet: column 'prediction_time' has type string, expected timestamp[us]"),
    (lambda d: (d / "metadata" / "dataset.json").write_text(json.dumps({"dataset_name": 3})),
     "metadata/dataset.json: field 'dataset_name' = 3 does not match MEDS DatasetMetadataSchema"),
    (lambda d: pq.write_table(pq.read_table(d / "metadata" / "subject_splits.parquet").append_column(
        "site", pa.array(["a"] * 30)), d / "metadata" / "subject_splits.parquet"),
     "subject_splits.parquet: column 'site' is not allowed (MEDS SubjectSplitSchema"),
    (_write("metadata/codes.parquet", pa.table({"code": pa.array([1, 2], pa.int64())})),
     "metadata/codes.parquet: column 'code' has type int64, expected string (MEDS CodeMetadataSchema)"),
])
def test_bad_meds_input_names_file_and_column(synth, prepared, tmp_path, capsys, edit, message):
  out = tmp_path / "out"
  shutil.copytree(prepared, out)
  before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  args = ["--input", str(copy(synth, tmp_path, edit)), "--out", str(out), "--overwrite"]
  assert prepare_meds.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: ") and message in err[-1], err[-1]
  assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing overwritten
