"""EHR tokenization, alternative `text` (jepa_ehr.md §4.3): smb-utils-style serialization + a byte-level BPE.

A subject becomes readable text: a demographics block (`Birth: YYYY-MM-DD`, then its static codes), then per calendar
day (UTC) a header `[YYYY-MM-DD]` and one line per code, grouped by category in the fixed order of CATEGORIES;
`CODE (unit): v1, v2` (values %.2f, the 5 most recent of that day, oldest first) or `CODE` when valueless; duplicate
lines removed. Category = the code's prefix (text before the first `//`) looked up in PREFIX_CATEGORY, else
`observations`. MEDS has no unit column in general: "(unit)" appears only when the shards carry a `unit` column.

Records are `<bos>` demographics `<timeline>` day blocks... `<eos>`, each block encoded on its own so no BPE token
straddles two days. `<timeline>` closes the prefix (what a cut always keeps). A day block's tokens all carry one
time: the last event time of that day, so a window "time <= t" holds a day only once every event in it is at or
before t (the day is the unit; a node inside a day never sees that day's later events). Prefix tokens carry the
first event time, `<eos>` the last, as in the `codes` tokenizer. The BPE (default 8192 ids, specials included) is
trained on the train split's blocks only and is deterministic for the same input. Supported for comparison only.
"""

import pathlib

import numpy as np
import pyarrow.parquet as pq
import tokenizers

from tessera.data import meds_schema
from tessera.data import text_tokenizer

TOKENIZER_FILE = "tokenizer.json"
PAD, BOS, EOS, UNK, TIMELINE = "<pad>", "<bos>", "<eos>", "<unk>", "<timeline>"
BIRTH_CODE, MAX_VALUES = "MEDS_BIRTH", 5
DAY_US = 86_400 * 1_000_000
CATEGORIES = ("demographics", "conditions", "observations", "measurements", "procedures", "drugs", "death", "notes")
# Project mapping of MEDS code prefixes (MIMIC-IV MEDS, the §6 synthetic set, common ETL names); anything else is an
# observation (MIMIC's TRANSFER_TO, HOSPITAL_ADMISSION, ED_REGISTRATION, DRG, vitals such as `Blood Pressure`, ...).
PREFIX_CATEGORY = {
    **dict.fromkeys(("GENDER", "RACE", "ETHNICITY", "MARITAL_STATUS", "LANGUAGE", "INSURANCE"), "demographics"),
    **dict.fromkeys(("DIAGNOSIS", "DX", "CONDITION", "ICD", "ICD9", "ICD10"), "conditions"),
    **dict.fromkeys(("LAB", "MEASUREMENT", "SUBJECT_WEIGHT_AT_INFUSION", "SUBJECT_FLUID_OUTPUT"), "measurements"),
    **dict.fromkeys(("PROCEDURE", "PROC", "HCPCS"), "procedures"),
    **dict.fromkeys(("MEDICATION", "MED", "DRUG", "INFUSION_START", "INFUSION_END"), "drugs"),
    "MEDS_DEATH": "death",
    **dict.fromkeys(("NOTE", "NOTES"), "notes"),
}


def category_of(code: str) -> str:
  return PREFIX_CATEGORY.get(code.split("//", 1)[0].upper(), "observations")


def read_units(meds_dir: pathlib.Path) -> np.ndarray | None:
  """The optional `unit` column of every shard, in meds_schema.read_events' row order; None when no shard has it."""
  parts, any_unit = [], False
  for path in meds_schema.data_files(meds_dir):
    names = pq.read_schema(path).names
    if "unit" in names:
      any_unit = True
      parts.append(np.asarray(pq.read_table(path, columns=["unit"]).column("unit").to_pylist(), dtype=object))
    else:
      parts.append(np.full(pq.read_metadata(path).num_rows, None, dtype=object))
  return np.concatenate(parts) if any_unit else None


def _date(time_us: int) -> str:
  return str(np.datetime64(int(time_us), "us").astype("datetime64[D]"))


def _lines(codes: list[str], units, values) -> list[str]:
  """One line per (code, unit) in first-seen order, within categories in CATEGORIES order; duplicates removed."""
  groups = {}
  for code, unit, value in zip(codes, units, values):
    groups.setdefault((category_of(code), code, unit), []).append(value)
  rank = {c: i for i, c in enumerate(CATEGORIES)}
  lines = []
  for (_, code, unit), vals in sorted(groups.items(), key=lambda kv: rank[kv[0][0]]):  # stable: first-seen order
    head = f"{code} ({unit})" if unit else code
    shown = [v for v in vals if not np.isnan(v)][-MAX_VALUES:]
    lines.append(f"{head}: " + ", ".join(f"{v:.2f}" for v in shown) if shown else head)
  return list(dict.fromkeys(lines))


class Serializer:
  """All subjects' text blocks, from the flat event columns (sorted once: subject, time, code, value)."""

  def __init__(self, events: meds_schema.Events, units: np.ndarray | None = None):
    order = np.lexsort((events.numeric_value, events.code_index, events.time_us, events.subject_id))
    self.subject_id, self.time_us = events.subject_id[order], events.time_us[order]
    self.code = np.asarray(events.codes, dtype=object)[events.code_index[order]]
    self.value = events.numeric_value[order].astype(np.float64)
    self.unit = units[order] if units is not None else np.full(len(order), None, dtype=object)
    bounds = np.flatnonzero(np.r_[True, self.subject_id[1:] != self.subject_id[:-1], True])
    self.subjects = self.subject_id[bounds[:-1]]
    self._bounds = dict(zip(self.subjects.tolist(), zip(bounds[:-1].tolist(), bounds[1:].tolist())))

  def subject(self, subject: int) -> tuple[str, list[tuple[int, str]], int] | None:
    """(demographics block, [(day time us, day block)], first event time us); None without a timed event besides
    birth. A day's time is its last event's."""
    lo, hi = self._bounds[subject]
    time_us, code = self.time_us[lo:hi], self.code[lo:hi].tolist()
    unit, value = self.unit[lo:hi].tolist(), self.value[lo:hi].tolist()
    birth = np.asarray([c == BIRTH_CODE for c in code], dtype=bool)
    timed = np.flatnonzero((time_us != meds_schema.NO_TIME) & ~birth)
    if not len(timed):
      return None
    static = np.flatnonzero((time_us == meds_schema.NO_TIME) & ~birth)
    static = static[np.argsort(np.asarray([code[i] for i in static], dtype=object), kind="stable")]
    demographics = [f"Birth: {_date(time_us[birth][0])}"] if birth.any() else []
    demographics += _lines([code[i] for i in static], [unit[i] for i in static], [value[i] for i in static])
    day = time_us[timed] // DAY_US
    starts = np.flatnonzero(np.r_[True, day[1:] != day[:-1], True])
    days = []
    for a, b in zip(starts[:-1].tolist(), starts[1:].tolist()):
      rows = timed[a:b].tolist()
      lines = _lines([code[i] for i in rows], [unit[i] for i in rows], [value[i] for i in rows])
      days.append((int(time_us[rows[-1]]), f"[{_date(time_us[rows[0]])}]\n" + "".join(f"{l}\n" for l in lines)))
    return "".join(f"{l}\n" for l in demographics), days, int(time_us[timed[0]])

  def text(self, subject: int) -> str:
    """The whole serialization of one subject (what smb-utils would feed a backbone)."""
    demographics, days, _ = self.subject(subject)
    return demographics + "".join(block for _, block in days)

  def blocks(self, subjects) -> "Iterator[str]":
    for subject in subjects:
      found = self.subject(int(subject))
      if found is not None:
        yield found[0]
        yield from (block for _, block in found[1])


def fit(serializer: Serializer, train_subjects, vocab_size: int) -> tokenizers.Tokenizer:
  """A byte-level BPE of `vocab_size` ids in all (the specials included) trained on the train subjects' blocks.
  Reuses tessera.data.text_tokenizer's trainer (its `<eos>` is id 0); the other specials come after the merges."""
  hf = text_tokenizer.train("bpe", serializer.blocks(sorted(int(s) for s in train_subjects)), vocab_size - 4)
  hf.add_special_tokens([PAD, BOS, UNK, TIMELINE])
  return hf


class MedsTextTokenizer:
  """A fitted text tokenizer with the attributes the EHR pipeline reads (specials, prefix_length). No token is a
  whole MEDS code, so `id_of` is empty and `q_first` -1: the probe's last-value baseline is a `codes` feature."""

  kind = "text"

  def __init__(self, hf: tokenizers.Tokenizer):
    self.hf = hf
    self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
    ids = [hf.token_to_id(t) for t in (PAD, BOS, EOS, UNK, TIMELINE)]
    if None in ids:
      raise ValueError(f"tokenizer: lacks {(PAD, BOS, EOS, UNK, TIMELINE)[ids.index(None)]} (not written by "
                       "scripts/prepare_meds --tokenizer text; re-run it)")
    self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.timeline_id = ids
    self.id_of, self.q_first = {}, -1

  @classmethod
  def from_file(cls, path: pathlib.Path) -> "MedsTextTokenizer":
    if not path.is_file():
      raise FileNotFoundError(f"{path}: missing (prepare the directory with scripts/prepare_meds --tokenizer text)")
    return cls(text_tokenizer.load_file(path))

  def prefix_length(self, tokens) -> int:
    """<bos>, the demographics block and `<timeline>`."""
    at = np.flatnonzero(np.asarray(tokens) == self.timeline_id)
    return int(at[0]) + 1 if len(at) else 1

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).ravel() if 0 <= i < self.vocab_size]
    return self.hf.decode(ids, skip_special_tokens=False)


class SubjectTextTokenizer:
  """(tokens, times) per subject, the interface of meds_tokenize.SubjectTokenizer."""

  def __init__(self, tokenizer: MedsTextTokenizer, serializer: Serializer):
    self.tok, self.serializer, self.subjects = tokenizer, serializer, serializer.subjects

  def subject(self, subject: int) -> tuple[np.ndarray, np.ndarray] | None:
    found = self.serializer.subject(subject)
    if found is None:
      return None
    demographics, days, first_time = found
    encoded = self.tok.hf.encode_batch([demographics] + [block for _, block in days], add_special_tokens=False)
    lengths = [len(e.ids) for e in encoded]
    tokens = np.concatenate([[self.tok.bos_id], encoded[0].ids, [self.tok.timeline_id],
                             *[e.ids for e in encoded[1:]], [self.tok.eos_id]]).astype(np.int32)
    times = np.concatenate([np.full(lengths[0] + 2, first_time),
                            np.repeat([t for t, _ in days], lengths[1:]), [days[-1][0]]]).astype(np.int64)
    return tokens, times
