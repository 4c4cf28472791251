"""Probe labels derived from MEDS events at prediction times, using nothing observed after the prediction time.

Per hospital stay (admission a paired with the next discharge d): at node a + 24 h (stays >= 24 h, alive at the
node) in-hospital mortality (death in (node, d + 1 d]), ICU admission in (node, min(d, node + 7 d)] and length of
stay > 7 d; at node d (alive): 30-day readmission (next admission in (d, d + 30 d]) and 1-year mortality. Every
outcome window is open at the node, so an event at or before the prediction time never makes a label positive.
(Which stays are eligible uses the stay's length, as cohort selection does; no input ever sees it.)
"""

import dataclasses
import pathlib

import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tessera.data import meds_schema
from tessera.data import prepare_io

_HOUR_US = 3600 * 1_000_000
_DAY_US = 24 * _HOUR_US
ADMISSION, DISCHARGE, ICU, DEATH = "HOSPITAL_ADMISSION", "HOSPITAL_DISCHARGE", "ICU_ADMISSION", "MEDS_DEATH"
ICU_HORIZON_DAYS = 7


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  needs: tuple[str, ...]  # code prefixes that must occur in the data, else the task is skipped


TASKS = (
    Task("in_hospital_mortality", (ADMISSION, DISCHARGE, DEATH)),
    Task("icu_admission", (ADMISSION, DISCHARGE, ICU)),
    Task("long_length_of_stay", (ADMISSION, DISCHARGE)),
    Task("readmission_30d", (ADMISSION, DISCHARGE)),
    Task("mortality_1y", (ADMISSION, DISCHARGE, DEATH)),
)


def _stays(admissions: np.ndarray, discharges: np.ndarray) -> list[tuple[int, int]]:
  """Each admission with the first discharge at or after it; admissions inside a stay already open are merged."""
  stays, open_until = [], -1
  for a in admissions.tolist():
    after = discharges[discharges >= a]
    if not len(after) or a <= open_until:
      continue
    stays.append((a, int(after[0])))
    open_until = int(after[0])
  return stays


def _any_in(times: np.ndarray, lo: int, hi: int) -> bool:
  """Any time in the half-open window (lo, hi]."""
  return bool(((times > lo) & (times <= hi)).any())


def subject_labels(times: dict[str, np.ndarray]) -> dict[str, list[tuple[int, bool]]]:
  """{task: [(prediction_time_us, label)]} for one subject, from the sorted times of each code family."""
  death = times[DEATH][0] if len(times[DEATH]) else None
  alive_at = (lambda t: death is None or death > t)
  out = {task.name: [] for task in TASKS}
  for a, d in _stays(times[ADMISSION], times[DISCHARGE]):
    node = a + 24 * _HOUR_US
    if d - a >= 24 * _HOUR_US and alive_at(node):
      out["in_hospital_mortality"].append((node, death is not None and node < death <= d + _DAY_US))
      out["icu_admission"].append((node, _any_in(times[ICU], node, min(d, node + ICU_HORIZON_DAYS * _DAY_US))))
      out["long_length_of_stay"].append((node, d - a > 7 * _DAY_US))
    if alive_at(d):
      out["readmission_30d"].append((d, _any_in(times[ADMISSION], d, d + 30 * _DAY_US)))
      out["mortality_1y"].append((d, death is not None and d < death <= d + 365 * _DAY_US))
  return out


def derive(events: meds_schema.Events, skipped: dict | None = None) -> dict[str, pa.Table]:
  """MEDS label tables (subject_id, prediction_time, boolean_value) for every task whose codes occur; a task whose
  codes are absent is skipped with a one-line warning (and its reason put in `skipped`)."""
  families = {}
  for family in (ADMISSION, DISCHARGE, ICU, DEATH):
    family_codes = [i for i, c in enumerate(events.codes) if c == family or c.startswith(family + "//")]
    families[family] = np.isin(events.code_index, family_codes) & (events.time_us != meds_schema.NO_TIME)
  tasks = []
  for task in TASKS:
    missing = [f for f in task.needs if not families[f].any()]
    if missing:
      reason = f"no {', '.join(missing)} events in the data"
      prepare_io.warn(f"label {task.name}: skipped, {reason}")
      if skipped is not None:
        skipped[task.name] = reason
    else:
      tasks.append(task.name)
  rows = {name: ([], [], []) for name in tasks}
  relevant = np.flatnonzero(np.logical_or.reduce(list(families.values())))
  subjects = events.subject_id[relevant]
  for subject in np.unique(subjects).tolist():
    picked = relevant[subjects == subject]
    times = {f: np.sort(events.time_us[picked[families[f][picked]]]) for f in families}
    for name, labels in subject_labels(times).items():
      if name in rows:
        for prediction_time, label in labels:
          rows[name][0].append(subject)
          rows[name][1].append(prediction_time)
          rows[name][2].append(label)
  return {name: pa.table({"subject_id": pa.array(s, pa.int64()),
                          "prediction_time": pa.array(t, pa.int64()).cast(pa.timestamp("us")),
                          "boolean_value": pa.array(v, pa.bool_())})
          for name, (s, t, v) in rows.items()}


def write(tables: dict[str, pa.Table], labels_dir: pathlib.Path):
  labels_dir.mkdir(parents=True, exist_ok=True)
  for name, table in tables.items():
    pq.write_table(table, labels_dir / f"{name}.parquet")


SPLIT_DIRS = (meds.train_split, meds.tuning_split, meds.held_out_split)


def input_label_files(meds_dir: pathlib.Path) -> dict[str, list[pathlib.Path]]:
  """{task: its parquet shards} shipped with a MEDS dataset: labels/<task>.parquet (tessera's layout) and the MEDS
  ecosystem's task_labels/<task path>/**.parquet (MEDS-DEV; shards may sit in train/tuning/held_out folders; a
  nested task path becomes a name joined by '.'), or task_labels/<task>.parquet."""
  tasks = {path.stem: [path] for path in sorted((meds_dir / "labels").glob("*.parquet"))}
  root = meds_dir / "task_labels"
  for path in sorted(root.rglob("*.parquet")):
    parts = path.relative_to(root).with_suffix("").parts
    folder = parts[:-1]
    if folder and folder[-1] in SPLIT_DIRS:
      folder = folder[:-1]
    tasks.setdefault(".".join(folder) if folder else parts[-1], []).append(path)
  return tasks


def read_input_labels(meds_dir: pathlib.Path, subjects: np.ndarray) -> dict[str, pa.Table]:
  """The dataset's own label files, each conformed to the MEDS LabelSchema (no extra columns) with every subject
  in the data and a boolean_value (what the probes read). Any failure is one line naming the file and column."""
  tables = {}
  for task, paths in input_label_files(meds_dir).items():
    parts = []
    for path in paths:
      try:
        table = pq.read_table(path)
      except (pa.ArrowInvalid, OSError) as e:
        raise prepare_io.DataError(f"{path}: unreadable parquet ({str(e).splitlines()[0]})") from None
      table = meds_schema.conform(meds.LabelSchema, table, path)
      if "boolean_value" not in table.column_names:
        raise prepare_io.DataError(f"{path}: column 'boolean_value' missing (the probes need binary labels; "
                                   f"columns: {', '.join(table.column_names)})")
      subject_N = table.column("subject_id").to_numpy()
      unknown = np.flatnonzero(~np.isin(subject_N, subjects))
      if len(unknown):
        raise prepare_io.DataError(f"{path}: column 'subject_id': row {unknown[0]}: subject {subject_N[unknown[0]]} "
                                   f"is not in data/ ({len(unknown)} rows of unknown subjects)")
      parts.append(table.select(["subject_id", "prediction_time", "boolean_value"]))
    tables[task] = pa.concat_tables(parts)
  return tables
