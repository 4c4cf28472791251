"""Synthetic MEDS data with planted dynamics (jepa_ehr.md §6): the future follows a latent trend, not the last value.

  python -m tessera.data.meds_synth --out data/synth-meds [--subjects 4000] [--seed 0]

Severity s(tau) = s0 + g*tau (tau in years since enrollment), slope g ~ N(0, 1). Once s > 1.5 a treatment (MED//A at
every visit) lowers the slope by 0.5. Visits are a Poisson process (mean gap 30 d) over 3 years; labs track s with
noise (LAB//A tightly, LAB//B loosely, LAB//C not at all), diagnoses DX//1..5 grow likelier with s, 3 noise codes
per visit, death when s > 4. Labels at the first visit after 0.5, 1.0 and 1.5 years: short_term (s 30 d later above
the median), long_term_slope (slope in force > 0, 5% flipped) and death_1y. Deterministic in (seed, subject).
"""

import argparse
import datetime
import json
import pathlib
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_EPOCH = datetime.datetime(1970, 1, 1)
_YEAR_DAYS = 365.25
_US_PER_DAY = 86_400 * 1_000_000
FOLLOW_UP_YEARS, MEAN_GAP_DAYS, TREAT_AT, TREAT_SLOPE_DROP, DEATH_AT = 3.0, 30.0, 1.5, 0.5, 4.0
NODE_YEARS = (0.5, 1.0, 1.5)
NUM_NOISE_CODES, LABEL_NOISE = 50, 0.05
SPLIT_FRACTIONS = (("train", 0.8), ("tuning", 0.1), ("held_out", 0.1))


def _us(days_since_epoch: float) -> int:
  return int(round(days_since_epoch * _US_PER_DAY))


class _Trajectory:
  """Severity over time with the treatment kink: slope g until s first exceeds TREAT_AT at a visit, g - 0.5 after."""

  def __init__(self, s0: float, g: float):
    self.s0, self.g, self.treated_at, self.s_treat = s0, g, None, None

  def severity(self, tau: float) -> float:
    if self.treated_at is None or tau <= self.treated_at:
      return self.s0 + self.g * tau
    return self.s_treat + (self.g - TREAT_SLOPE_DROP) * (tau - self.treated_at)

  def slope(self, tau: float) -> float:
    return self.g if self.treated_at is None or tau < self.treated_at else self.g - TREAT_SLOPE_DROP


def subject(seed: int, index: int):
  """(rows [(time_us or None, code, value or None)], node labels [(time_us, short_s, slope_label, death_1y)])."""
  rng = np.random.default_rng([seed, index])
  enroll_days = (datetime.datetime(2100, 1, 1) - _EPOCH).days + rng.uniform(0, 10 * _YEAR_DAYS)
  birth_days = enroll_days - rng.uniform(30, 80) * _YEAR_DAYS
  trajectory = _Trajectory(rng.normal(), rng.normal())
  rows = [(None, "GENDER//" + ("F" if rng.random() < 0.5 else "M"), None), (_us(birth_days), "MEDS_BIRTH", None)]
  visits, tau, death_tau = [], 0.0, None
  while tau <= FOLLOW_UP_YEARS:
    t_us = _us(enroll_days + tau * _YEAR_DAYS)
    s = trajectory.severity(tau)
    if trajectory.treated_at is None and s > TREAT_AT:
      trajectory.treated_at, trajectory.s_treat = tau, s
    visits.append(tau)
    if trajectory.treated_at is not None:
      rows.append((t_us, "MED//A", None))
    rows += [(t_us, "LAB//A", s + rng.normal(0, 0.3)), (t_us, "LAB//B", 0.5 * s + rng.normal()),
             (t_us, "LAB//C", rng.normal())]
    rows += [(t_us, f"DX//{k}", None) for k in range(1, 6) if rng.random() < 1 / (1 + np.exp(-(s - 2 + 0.3 * k)))]
    rows += [(t_us, f"NOISE//{j}", None) for j in rng.integers(0, NUM_NOISE_CODES, 3).tolist()]
    if s > DEATH_AT:
      rows.append((t_us, "MEDS_DEATH", None))
      death_tau = tau
      break
    tau += rng.exponential(MEAN_GAP_DAYS) / _YEAR_DAYS
  nodes = []
  for node_years in NODE_YEARS:
    node_tau = next((v for v in visits if v > node_years), None)
    if node_tau is None or (death_tau is not None and node_tau >= death_tau):
      continue
    slope_label = trajectory.slope(node_tau) > 0
    if rng.random() < LABEL_NOISE:
      slope_label = not slope_label
    died_within_1y = death_tau is not None and death_tau - node_tau <= 365 / _YEAR_DAYS
    nodes.append((_us(enroll_days + node_tau * _YEAR_DAYS), trajectory.severity(node_tau + 30 / _YEAR_DAYS),
                  slope_label, died_within_1y))
  return rows, nodes


def write_dataset(out: pathlib.Path, num_subjects: int = 200, seed: int = 0) -> pathlib.Path:
  """Writes a MEDS directory (data/<split>/0.parquet, metadata/, labels/) and returns it."""
  out = pathlib.Path(out)
  order = np.random.default_rng(seed).permutation(num_subjects)
  bounds = np.cumsum([0] + [int(round(f * num_subjects)) for _, f in SPLIT_FRACTIONS[:-1]] + [num_subjects])
  split_of = {}
  for (name, _), lo, hi in zip(SPLIT_FRACTIONS, bounds[:-1], np.minimum(bounds[1:], num_subjects)):
    split_of.update({1000 + int(i): name for i in order[lo:hi]})
  columns = {name: {"subject_id": [], "time": [], "code": [], "numeric_value": []} for name, _ in SPLIT_FRACTIONS}
  labels = {"short_term": [], "long_term_slope": [], "death_1y": []}
  short_term_values = []
  for index in range(num_subjects):
    subject_id = 1000 + index
    rows, nodes = subject(seed, index)
    table = columns[split_of[subject_id]]
    for time_us, code, value in rows:
      table["subject_id"].append(subject_id)
      table["time"].append(time_us)
      table["code"].append(code)
      table["numeric_value"].append(value)
    for time_us, short_s, slope_label, death_label in nodes:
      short_term_values.append((subject_id, time_us, short_s))
      labels["long_term_slope"].append((subject_id, time_us, slope_label))
      labels["death_1y"].append((subject_id, time_us, death_label))
  median = float(np.median([v for _, _, v in short_term_values])) if short_term_values else 0.0
  labels["short_term"] = [(s, t, v > median) for s, t, v in short_term_values]

  schema = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                      ("numeric_value", pa.float32())])
  for name, table in columns.items():
    (out / "data" / name).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table, schema=schema), out / "data" / name / "0.parquet")
  (out / "metadata").mkdir(parents=True, exist_ok=True)
  codes = sorted({c for table in columns.values() for c in table["code"]})
  pq.write_table(pa.table({"code": codes, "description": pa.array([None] * len(codes), pa.string()),
                           "parent_codes": pa.array([None] * len(codes), pa.list_(pa.string()))}),
                 out / "metadata" / "codes.parquet")
  pq.write_table(pa.table({"subject_id": pa.array(sorted(split_of), pa.int64()),
                           "split": [split_of[s] for s in sorted(split_of)]}),
                 out / "metadata" / "subject_splits.parquet")
  (out / "metadata" / "dataset.json").write_text(json.dumps(
      {"dataset_name": "tessera-synthetic-meds", "dataset_version": f"seed{seed}-n{num_subjects}",
       "etl_name": "tessera.data.meds_synth", "meds_version": "0.4"}, indent=2) + "\n")
  (out / "labels").mkdir(exist_ok=True)
  for name, rows in labels.items():
    pq.write_table(pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                             "prediction_time": pa.array([r[1] for r in rows], pa.timestamp("us")),
                             "boolean_value": pa.array([bool(r[2]) for r in rows], pa.bool_())}),
                   out / "labels" / f"{name}.parquet")
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tessera.data.meds_synth", description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, type=pathlib.Path, help="the MEDS directory to write")
  parser.add_argument("--subjects", type=int, default=4000, help="synthetic subjects (default: %(default)s)")
  parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
  args = parser.parse_args(argv)
  write_dataset(args.out, args.subjects, args.seed)
  print(f"meds_synth: wrote {args.subjects} subjects to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
