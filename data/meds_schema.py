"""Reading a MEDS directory (data/**/*.parquet + metadata/) into flat numpy columns, checking what we rely on.

Every table is conformed to the `meds` package's schema (DataSchema, SubjectSplitSchema, CodeMetadataSchema;
dataset.json against DatasetMetadataSchema): required columns present, types equal or safely castable (int32 ids,
large strings, ms timestamps are cast as MEDS' own `align` does), no extra columns where the schema forbids them.
On top: no null subject ids or codes, each subject in one contiguous run of one shard, timed events non-decreasing
per subject, a split for every subject and no unknown subject in the split file. Each failure is one line naming
the file, column and row. Shards may mix splits: splits come only from metadata/subject_splits.parquet.
"""

import dataclasses
import json
import pathlib

import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tessera.data import prepare_io
from tessera.data.prepare_io import DataError

NO_TIME = np.iinfo(np.int64).min  # a static (null-time) measurement
SPLITS_FILE = meds.subject_splits_filepath
CODES_FILE = meds.code_metadata_filepath
DATASET_FILE = meds.dataset_metadata_filepath


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


_FAMILIES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_timestamp, pa.types.is_boolean,
             lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or (
                 pa.types.is_dictionary(t) and pa.types.is_string(t.value_type)),
             lambda t: pa.types.is_list(t) or pa.types.is_large_list(t), pa.types.is_null)


def _same_family(got, want) -> bool:
  """A cast MEDS' `align` may do that we accept: width, unit or string flavour only (a string `time` column would
  parse, but is not a MEDS file); all-null columns take any type."""
  return pa.types.is_null(got) or any(f(got) and f(want) for f in _FAMILIES)


def conform(schema, table: pa.Table, path) -> pa.Table:
  """`table` aligned to a `meds` schema (columns cast to its types), or a one-line DataError naming the column."""
  from flexible_schema.exceptions import SchemaValidationError, TableValidationError
  try:
    for name in schema.columns():
      if name in table.column_names and not _same_family(table.schema.field(name).type, schema.column_type(name)):
        raise SchemaValidationError(mistyped_cols=[(name, schema.column_type(name), table.schema.field(name).type)])
    return schema.align(table)
  except (SchemaValidationError, TableValidationError) as e:
    kind = schema.__name__
    if getattr(e, "disallowed_extra_cols", None):
      raise DataError(f"{path}: column {e.disallowed_extra_cols[0]!r} is not allowed (MEDS {kind}: "
                      f"{', '.join(schema.columns())} only)") from None
    if getattr(e, "missing_req_cols", None):
      raise DataError(f"{path}: column {e.missing_req_cols[0]!r} missing (MEDS {kind}; columns: "
                      f"{', '.join(table.column_names)})") from None
    for name, want, got in getattr(e, "mistyped_cols", None) or ():
      try:
        table.column(name).cast(want)
        if not _same_family(got, want):
          raise pa.ArrowInvalid("another type family")
      except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"{path}: column {name!r} has type {got}, expected {want} (MEDS {kind})") from None
    for name in getattr(e, "nullability_none_err_cols", None) or ():
      raise DataError(f"{path}: column {name!r}: row {first_null_row(table.column(name))} is null "
                      f"(MEDS {kind})") from None
    raise DataError(f"{path}: does not match MEDS {kind} ({e})") from None


def _read_table(path) -> pa.Table:
  try:
    return pq.read_table(path)
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"{path}: unreadable parquet ({str(e).splitlines()[0]})") from None


def first_null_row(column) -> int:
  return int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])


def _read_shard(path: pathlib.Path):
  table = conform(meds.DataSchema, _read_table(path), path)
  subject, time, code = (table.column(name) for name in ("subject_id", "time", "code"))
  value = table.column("numeric_value") if "numeric_value" in table.column_names else None  # MEDS: optional
  subject_id = subject.to_numpy().astype(np.int64)
  time_us = time.cast(pa.int64()).fill_null(NO_TIME).to_numpy()
  codes = code.combine_chunks().dictionary_encode()
  numeric = (np.full(len(table), np.nan, np.float32) if value is None
             else value.fill_null(np.nan).to_numpy())
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
  table = conform(meds.SubjectSplitSchema, _read_table(path), path)
  subject, split = table.column("subject_id"), table.column("split")
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
  """Rows of metadata/codes.parquet (conformed to CodeMetadataSchema); a missing or empty file is only a warning
  (nothing here needs it)."""
  path = meds_dir / CODES_FILE
  if not path.is_file():
    prepare_io.warn(f"{path}: missing; continuing without code metadata")
    return 0
  rows = conform(meds.CodeMetadataSchema, _read_table(path), path).num_rows
  if rows == 0:
    prepare_io.warn(f"{path}: empty; continuing without code metadata")
  return rows


def read_dataset_metadata(meds_dir: pathlib.Path) -> dict:
  """metadata/dataset.json checked against DatasetMetadataSchema (all fields optional; {} when the file is absent,
  with a warning). A bad field is one line naming it."""
  path = meds_dir / DATASET_FILE
  if not path.is_file():
    prepare_io.warn(f"{path}: missing; continuing without dataset metadata")
    return {}
  try:
    metadata = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: not JSON ({e})") from None
  if not isinstance(metadata, dict):
    raise DataError(f"{path}: expected a JSON object, got {type(metadata).__name__}")
  for key, value in metadata.items():
    try:
      meds.DatasetMetadataSchema.validate({key: value})
    except Exception:  # flexible_schema wraps jsonschema's errors without the field
      raise DataError(f"{path}: field {key!r} = {value!r} does not match MEDS DatasetMetadataSchema") from None
  return metadata
