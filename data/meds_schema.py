"""Reading a MEDS directory (data/**/*.parquet + metadata/) into flat numpy columns, checking what we rely on.

Checked: required columns and their types, no null subject ids or codes, each subject in one contiguous run of one
shard, timed events non-decreasing per subject, a split for every subject and no unknown subject in the split
file. Each failure is one line naming the file, column and row. Shards may mix splits: splits come only from
metadata/subject_splits.parquet.
"""

import dataclasses
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tessera.data import prepare_io
from tessera.data.prepare_io import DataError

NO_TIME = np.iinfo(np.int64).min  # a static (null-time) measurement
SPLITS_FILE = "metadata/subject_splits.parquet"
CODES_FILE = "metadata/codes.parquet"


@dataclasses.dataclass
class Events:
  """One row per measurement, in file order; codes are indices into the sorted `codes` list."""
  subject_id: np.ndarray  # int64
  time_us: np.ndarray  # int64 microseconds since 1970, NO_TIME for static rows
  code_index: np.ndarray  # int32
  numeric_value: np.ndarray  # float32, NaN where null
  codes: list[str]

  def __len__(self):
    return len(self.subject_id)


def data_files(meds_dir: pathlib.Path) -> list[pathlib.Path]:
  if not meds_dir.is_dir():
    raise DataError(f"{meds_dir}: no such MEDS directory")
  files = sorted((meds_dir / "data").rglob("*.parquet"))
  if not files:
    raise DataError(f"{meds_dir / 'data'}: no *.parquet shards")
  return files


def _column(table: pa.Table, path, name: str, accept, expected: str, required: bool = True):
  if name not in table.column_names:
    if required:
      raise DataError(f"{path}: column {name!r} missing (columns: {', '.join(table.column_names)})")
    return None
  column = table.column(name)
  if not accept(column.type):
    raise DataError(f"{path}: column {name!r} has type {column.type}, expected {expected}")
  return column


def _first_null_row(column) -> int:
  return int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])


def _read_shard(path: pathlib.Path):
  try:
    table = pq.read_table(path)
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"{path}: unreadable parquet ({str(e).splitlines()[0]})") from None
  subject = _column(table, path, "subject_id", pa.types.is_integer, "int64")
  time = _column(table, path, "time", pa.types.is_timestamp, "timestamp[us]")
  code = _column(table, path, "code", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or (
      pa.types.is_dictionary(t) and pa.types.is_string(t.value_type)), "string")
  value = _column(table, path, "numeric_value", pa.types.is_floating, "float32", required=False)
  for name, column in (("subject_id", subject), ("code", code)):
    if column.null_count:
      raise DataError(f"{path}: column {name!r}: row {_first_null_row(column)} is null")
  subject_id = subject.to_numpy().astype(np.int64)
  time_us = time.cast(pa.timestamp("us")).cast(pa.int64()).fill_null(NO_TIME).to_numpy()
  codes = code.cast(pa.string()).combine_chunks().dictionary_encode()
  numeric = (np.full(len(table), np.nan, np.float32) if value is None
             else value.cast(pa.float32()).fill_null(np.nan).to_numpy())
  _check_order(path, subject_id, time_us)
  return subject_id, time_us, codes.indices.to_numpy(), codes.dictionary.to_pylist(), numeric


def _check_order(path, subject_id: np.ndarray, time_us: np.ndarray):
  """Each subject one contiguous run; within it, timed rows never go back in time (static rows may sit anywhere)."""
  if not len(subject_id):
    return
  run_starts = np.flatnonzero(np.r_[True, subject_id[1:] != subject_id[:-1]])
  run_subjects = subject_id[run_starts]
  unique, counts = np.unique(run_subjects, return_counts=True)
  if (counts > 1).any():
    repeated = unique[counts > 1][0]
    second = run_starts[np.flatnonzero(run_subjects == repeated)[1]]
    raise DataError(f"{path}: column 'subject_id': row {second}: subject {repeated} appears again after other "
                    "subjects (a subject's rows must be contiguous)")
  timed = np.flatnonzero(time_us != NO_TIME)
  same_subject = subject_id[timed[1:]] == subject_id[timed[:-1]]
  backwards = np.flatnonzero(same_subject & (time_us[timed[1:]] < time_us[timed[:-1]]))
  if len(backwards):
    row = timed[backwards[0] + 1]
    earlier, later = (np.datetime64(int(time_us[r]), "us") for r in (timed[backwards[0]], row))
    raise DataError(f"{path}: column 'time': row {row}: subject {subject_id[row]}'s events are out of time order "
                    f"({later} after {earlier})")


def read_events(meds_dir: pathlib.Path) -> Events:
  files = data_files(meds_dir)
  progress = prepare_io.Progress(len(files), "reading MEDS shards", "shards")
  parts, shard_of_subject = [], {}
  for path in files:
    subject_id, time_us, code_indices, dictionary, numeric = _read_shard(path)
    for subject in np.unique(subject_id).tolist():
      if subject in shard_of_subject:
        raise DataError(f"{path}: column 'subject_id': subject {subject} also appears in "
                        f"{shard_of_subject[subject]} (a subject must live in one shard)")
      shard_of_subject[subject] = path
    parts.append((subject_id, time_us, code_indices, dictionary, numeric))
    progress.update()
  progress.close()
  codes = sorted(set().union(*(part[3] for part in parts)))
  position = {code: i for i, code in enumerate(codes)}
  code_index = np.concatenate([np.asarray([position[c] for c in part[3]], np.int32)[part[2]] if len(part[2])
                               else np.zeros(0, np.int32) for part in parts])
  events = Events(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), code_index,
                  np.concatenate([p[4] for p in parts]), codes)
  if len(events) == 0:
    raise DataError(f"{meds_dir / 'data'}: no events in any shard")
  return events


def read_splits(meds_dir: pathlib.Path, subjects: np.ndarray) -> dict[int, str]:
  """subject -> split from metadata/subject_splits.parquet; every data subject needs one, and only those."""
  path = meds_dir / SPLITS_FILE
  if not path.is_file():
    raise DataError(f"{path}: missing (splits come only from this file)")
  try:
    table = pq.read_table(path)
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"{path}: unreadable parquet ({str(e).splitlines()[0]})") from None
  subject = _column(table, path, "subject_id", pa.types.is_integer, "int64")
  split = _column(table, path, "split", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "string")
  for name, column in (("subject_id", subject), ("split", split)):
    if column.null_count:
      raise DataError(f"{path}: column {name!r}: row {_first_null_row(column)} is null")
  split_subjects = subject.to_numpy().astype(np.int64)
  known = np.isin(split_subjects, subjects)
  if not known.all():
    row = int(np.flatnonzero(~known)[0])
    raise DataError(f"{path}: column 'subject_id': row {row}: subject {split_subjects[row]} has no events in data/")
  assignment = dict(zip(split_subjects.tolist(), split.to_pylist()))
  missing = np.setdiff1d(subjects, split_subjects)
  if len(missing):
    raise DataError(f"{path}: column 'subject_id': subject {missing[0]} (in data/) has no split "
                    f"({len(missing)} subjects missing)")
  return assignment


def check_codes_metadata(meds_dir: pathlib.Path) -> int:
  """Rows of metadata/codes.parquet; a missing or empty file is only a warning (nothing here needs it)."""
  path = meds_dir / CODES_FILE
  if not path.is_file():
    prepare_io.warn(f"{path}: missing; continuing without code metadata")
    return 0
  try:
    rows = pq.ParquetFile(path).metadata.num_rows
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"{path}: unreadable parquet ({str(e).splitlines()[0]})") from None
  if rows == 0:
    prepare_io.warn(f"{path}: empty; continuing without code metadata")
  return rows
