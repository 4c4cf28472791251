"""EHR event tokenization, project default `codes` (jepa_ehr.md §4.2): fitted on the train split only.

A subject becomes `<bos>`, its static codes (sorted), an age token, then per distinct timestamp a time-gap token
(`DT//<left edge>`, none under 1 minute) and the events sorted by (code, value), each as `code [Qk]`, then `<eos>`.
Rare codes map to `<prefix>//<UNK>` (or `<unk>`). Every token carries its event's timestamp, so windows can be
cut at any time.
"""

import json
import pathlib

import numpy as np

from tessera.data import meds_schema
from tessera.data.prepare_io import DataError

VOCAB_FILE = "vocab.json"
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
BIRTH_CODE = "MEDS_BIRTH"
MIN_VALUES_FOR_BINS = 20
DECILES = tuple(np.round(np.arange(1, 10) / 10, 1).tolist())
_MINUTE_US = 60 * 1_000_000
_DAY = 24 * 60
_YEAR = 365.25 * _DAY
# meds-eic-ar time-gap edges, in minutes: the token names the left edge of the bin the gap falls in.
DT_EDGES = (("1m", 1), ("5m", 5), ("10m", 10), ("30m", 30), ("1h", 60), ("3h", 180), ("6h", 360), ("12h", 720),
            ("1d", _DAY), ("2d", 2 * _DAY), ("4d", 4 * _DAY), ("7d", 7 * _DAY), ("14d", 14 * _DAY),
            ("30d", 30 * _DAY), ("60d", 60 * _DAY), ("120d", 120 * _DAY), ("1y", _YEAR), ("2y", 2 * _YEAR),
            ("5y", 5 * _YEAR), ("10y", 10 * _YEAR), ("20y", 20 * _YEAR), ("40y", 40 * _YEAR))
AGE_BIN_YEARS, AGE_MAX = 5, 100
AGE_TOKENS = tuple(f"AGE//[{a},{a + AGE_BIN_YEARS})" for a in range(0, AGE_MAX, AGE_BIN_YEARS)) + (
    f"AGE//[{AGE_MAX},+)",)
Q_TOKENS = tuple(f"Q{k}" for k in range(1, 11))


def prefix_unk(code: str) -> str:
  return code.split("//", 1)[0] + "//<UNK>"


def _subjects_per_key(subject_id: np.ndarray, key: np.ndarray, num_keys: int) -> np.ndarray:
  """How many distinct subjects have each key (a code or prefix index)."""
  pairs = np.unique(np.stack([key.astype(np.int64), subject_id]), axis=1)
  return np.bincount(pairs[0], minlength=num_keys)


def fit(events: meds_schema.Events, is_train_row: np.ndarray, min_subjects: int) -> dict:
  """The vocabulary JSON: tokens (specials, Q, DT, AGE, static codes, prefix UNKs, codes) and per-code deciles."""
  codes = np.asarray(events.codes, dtype=object)
  birth = events.codes.index(BIRTH_CODE) if BIRTH_CODE in events.codes else -1
  train = is_train_row & (events.code_index != birth)
  static = train & (events.time_us == meds_schema.NO_TIME)
  timed = train & ~static
  static_codes = sorted(set(codes[np.unique(events.code_index[static])].tolist()))
  subjects = _subjects_per_key(events.subject_id[timed], events.code_index[timed], len(codes))
  kept = subjects >= min_subjects
  rare_rows = timed & ~kept[events.code_index]
  prefixes = sorted({prefix_unk(c) for c in codes[np.unique(events.code_index[rare_rows])].tolist()})
  prefix_of_code = np.asarray([prefixes.index(prefix_unk(c)) if prefix_unk(c) in prefixes else -1 for c in codes]
                              if prefixes else np.full(len(codes), -1))
  prefix_subjects = _subjects_per_key(events.subject_id[rare_rows], prefix_of_code[events.code_index[rare_rows]],
                                      len(prefixes)) if prefixes else np.zeros(0, int)
  prefix_tokens = [p for p, n in zip(prefixes, prefix_subjects) if n >= min_subjects]
  code_tokens = sorted(set(codes[kept].tolist()) - set(static_codes))

  valued = timed & kept[events.code_index] & ~np.isnan(events.numeric_value)
  order = np.argsort(events.code_index[valued], kind="stable")
  valued_codes, values = events.code_index[valued][order], events.numeric_value[valued][order].astype(np.float64)
  starts = np.searchsorted(valued_codes, np.arange(len(codes) + 1))
  value_edges = {}
  for code in np.flatnonzero(np.diff(starts) >= MIN_VALUES_FOR_BINS).tolist():
    value_edges[events.codes[code]] = np.quantile(values[starts[code]:starts[code + 1]], DECILES).tolist()

  tokens = list(SPECIALS) + list(Q_TOKENS) + [f"DT//{name}" for name, _ in DT_EDGES] + list(AGE_TOKENS)
  tokens += static_codes + prefix_tokens + code_tokens
  if len(set(tokens)) != len(tokens):
    raise DataError(f"vocabulary: a MEDS code collides with a reserved token name "
                    f"({sorted({t for t in tokens if tokens.count(t) > 1})[0]!r})")
  return {"version": 1, "tokenizer": "codes", "fit_split": "train", "min_subjects": min_subjects,
          "min_values_for_bins": MIN_VALUES_FOR_BINS, "deciles": list(DECILES),
          "dt_edges_minutes": {name: minutes for name, minutes in DT_EDGES}, "vocab_size": len(tokens),
          "tokens": tokens, "value_edges": value_edges}


class EventTokenizer:
  """A fitted vocabulary: MEDS codes -> token ids, and the pipeline-facing encode/decode ("tok | tok | ...")."""

  def __init__(self, vocab: dict):
    self.vocab = vocab
    self.tokens = vocab["tokens"]
    self.vocab_size = len(self.tokens)
    self.id_of = {token: i for i, token in enumerate(self.tokens)}
    self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self.id_of[t] for t in SPECIALS)
    self.q_first = self.id_of[Q_TOKENS[0]]
    self.dt_first = self.id_of[f"DT//{DT_EDGES[0][0]}"]
    self.age_first = self.id_of[AGE_TOKENS[0]]

  @classmethod
  def from_file(cls, path: pathlib.Path) -> "EventTokenizer":
    if not path.is_file():
      raise FileNotFoundError(f"{path}: missing (prepare the directory with scripts/prepare_meds)")
    return cls(json.loads(path.read_text()))

  def prefix_length(self, tokens) -> int:
    """<bos>, static codes and the age token: everything up to the age token (written last in the head); without a
    birth record only <bos> is known to be prefix."""
    head = np.asarray(tokens[:64])
    age = np.flatnonzero((head >= self.age_first) & (head < self.age_first + len(AGE_TOKENS)))
    return int(age[0]) + 1 if len(age) else 1

  def code_id(self, code: str) -> int:
    """The code's own token, else its prefix UNK, else <unk> (the rule for rare and never-seen codes alike)."""
    if code in self.id_of and code != BIRTH_CODE:
      return self.id_of[code]
    return self.id_of.get(prefix_unk(code), self.unk_id)

  def encode(self, text: str) -> np.ndarray:
    """Token names separated by "|" (codes may contain spaces); unknown names go through `code_id`."""
    names = [name.strip() for name in text.split("|") if name.strip()]
    return np.asarray([self.id_of[n] if n in self.id_of else self.code_id(n) for n in names], dtype=np.int32)

  def decode(self, ids) -> str:
    return " | ".join(self.tokens[int(i)] for i in np.asarray(ids).ravel() if 0 <= i < self.vocab_size)


def _dt_ids(gap_us: np.ndarray, dt_first: int) -> np.ndarray:
  """DT token per gap, -1 for gaps under the first edge (same cluster); >= 40 y stays in the last bin."""
  edges_us = np.asarray([minutes for _, minutes in DT_EDGES], dtype=np.float64) * _MINUTE_US
  bin_ = np.searchsorted(edges_us, gap_us.astype(np.float64), side="right") - 1
  return np.where(bin_ >= 0, dt_first + bin_, -1)


def _age_id(age_us: int, age_first: int) -> int:
  years = max(age_us, 0) / (_YEAR * _MINUTE_US)
  return age_first + min(int(years // AGE_BIN_YEARS), len(AGE_TOKENS) - 1)


class SubjectTokenizer:
  """Turns the events of many subjects into (tokens, times) per subject, vectorised over all rows at once."""

  def __init__(self, tokenizer: EventTokenizer, events: meds_schema.Events):
    self.tok = tokenizer
    self.events = events
    birth = events.codes.index(BIRTH_CODE) if BIRTH_CODE in events.codes else -1
    order = np.lexsort((events.numeric_value, events.code_index, events.time_us, events.subject_id))
    self.subject_id, self.time_us = events.subject_id[order], events.time_us[order]
    code_index, value = events.code_index[order], events.numeric_value[order]
    self.is_birth = code_index == birth
    code_ids = np.asarray([tokenizer.code_id(c) for c in events.codes], dtype=np.int32)
    self.code_id = code_ids[code_index]
    self.q_id = np.full(len(order), -1, dtype=np.int64)
    position = {code: i for i, code in enumerate(events.codes)}
    has_value = ~np.isnan(value)
    for code, edges in tokenizer.vocab["value_edges"].items():
      if code in position and code in tokenizer.id_of:
        rows = np.flatnonzero((code_index == position[code]) & has_value)
        self.q_id[rows] = tokenizer.q_first + np.searchsorted(np.asarray(edges), value[rows].astype(np.float64),
                                                              side="right")
    bounds = np.flatnonzero(np.r_[True, self.subject_id[1:] != self.subject_id[:-1], True])
    self.subjects = self.subject_id[bounds[:-1]]
    self._bounds = dict(zip(self.subjects.tolist(), zip(bounds[:-1].tolist(), bounds[1:].tolist())))

  def subject(self, subject: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(token ids int32, times int64 us) for one subject; None if it has no timed event besides birth."""
    lo, hi = self._bounds[subject]
    time_us, birth = self.time_us[lo:hi], self.is_birth[lo:hi]
    static = (time_us == meds_schema.NO_TIME) & ~birth
    timed = (time_us != meds_schema.NO_TIME) & ~birth
    if not timed.any():
      return None
    t = time_us[timed]
    first_time = int(t[0])
    new_time = np.r_[False, t[1:] != t[:-1]]
    gap = np.where(new_time, t - np.r_[t[:1], t[:-1]], 0)
    dt = np.where(new_time, _dt_ids(gap, self.tok.dt_first), -1)
    body_Nx3 = np.stack([dt, self.code_id[lo:hi][timed], self.q_id[lo:hi][timed]], axis=1)
    times_Nx3 = np.repeat(t[:, None], 3, axis=1)
    keep = body_Nx3 >= 0
    head = [self.tok.bos_id] + sorted(self.code_id[lo:hi][static].tolist(), key=lambda i: self.tok.tokens[i])
    births = time_us[birth]
    if len(births):
      head.append(_age_id(first_time - int(births[0]), self.tok.age_first))
    tokens = np.concatenate([head, body_Nx3[keep], [self.tok.eos_id]]).astype(np.int32)
    times = np.concatenate([np.full(len(head), first_time), times_Nx3[keep], [int(t[-1])]]).astype(np.int64)
    return tokens, times
