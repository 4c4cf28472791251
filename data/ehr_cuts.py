"""The cut-point pipeline of jepa_ehr.md §5 ("Cut-point sampling"), registered as data "ehr_cuts".

Reads a directory written by scripts/prepare_meds (per-subject tokens with per-token times). Row i of the endless
train stream is a pure function of (seed, i): a train subject drawn uniformly, a cut time t_c drawn uniformly among
its distinct timestamps with >= `min_ctx_events` body tokens at or before t_c and >= 1 in (t_c, t_c + Δ]
(Δ = `horizon_days`). Context = tokens with time <= t_c, left-truncated to `ctx_len` keeping the prefix (<bos>,
static codes, age; with the `text` tokenizer the demographics block); future = tokens in (t_c, t_c + Δ],
right-truncated to `fut_len`; x = ctx ⊕ fut padded to `ctx_len + fut_len` (= train.seq_len); `cut_idx` = last
context token, `last_idx` = last token of x. The trainer's resume state is the global batch index
(tessera.data.global_order's contract), so a resume draws the same rows.
(Project default: "events" in min_ctx_events are body tokens; the closing <eos> is never part of a window.)

With no `data.path` the registered preparer writes the planted-dynamics synthetic set (§6, tessera.data.meds_synth)
into <workdir>/data and prepares it there (configs/ehr_jepa.py:quickstart).
"""
import pathlib
import sys

import numpy as np
import pyarrow.parquet as pq

from tessera.data import array_record_io
from tessera.data import global_order
from tessera.data import registry
from tessera.data.prepare_io import STATS_FILE, read_json
from tessera.data.prepared import RECORDS_FILE, UNIGRAM_FILE, load_tokenizer

DAY_US = 86_400 * 1_000_000
PREPARED = "prepared"  # under the preparer's directory


def prefix_length(tokens, tokenizer) -> int:
  """The part of a record every window keeps, as the tokenizer defines it: `codes` <bos>, static codes, age token;
  `text` <bos>, the demographics block, <timeline>."""
  return tokenizer.prefix_length(tokens)


class Subject:
  """One record's index, prefix length and valid cut times (as context/future end indices). Tokens stay on disk
  (ArrayRecord reads are random access), so memory grows with cut points, not with history length."""

  def __init__(self, index: int, record: bytes, tokenizer, horizon_us: int, min_ctx: int):
    tokens, times = array_record_io.decode_tokens(record, True), array_record_io.decode_times(record)
    self.index = index
    self.prefix = prefix_length(tokens, tokenizer)
    body_end = len(tokens) - 1 if tokens[-1] == tokenizer.eos_id else len(tokens)
    body_times = times[self.prefix:body_end]
    cut_times = np.unique(body_times)
    ctx_end = self.prefix + np.searchsorted(body_times, cut_times, side="right")  # index after the context
    fut_end = self.prefix + np.searchsorted(body_times, cut_times + horizon_us, side="right")
    valid = (ctx_end - self.prefix >= min_ctx) & (fut_end > ctx_end)
    self.cut_times, self.ctx_end, self.fut_end = cut_times[valid], ctx_end[valid], fut_end[valid]


def window(tokens, prefix: int, ctx_end: int, fut_end: int, ctx_len: int, fut_len: int, pad_id: int):
  """(tokens [ctx_len + fut_len] padded, cut_idx, last_idx) for context tokens[:ctx_end] and future
  tokens[ctx_end:fut_end], truncated as §5 says."""
  start = max(prefix, ctx_end - (ctx_len - prefix))
  ctx = np.concatenate([tokens[:prefix], tokens[start:ctx_end]])[:ctx_len]
  fut = tokens[ctx_end:min(fut_end, ctx_end + fut_len)]
  row = np.full(ctx_len + fut_len, pad_id, dtype=np.int32)
  row[:len(ctx)] = ctx
  row[len(ctx):len(ctx) + len(fut)] = fut
  return row, len(ctx) - 1, len(ctx) + len(fut) - 1


def row_fields(rows, pad_id, fut_len):
  """Train fields from (tokens [T], cut_idx, last_idx) rows: every non-pad token is an input; targets shift by
  one; loss on targets inside x. `fut_inputs` = <bos> ⊕ x_fut (padded to fut_len + 1) and `fut_last` its last
  token serve the target option "fut_only_last" (§5)."""
  tokens_NxT = np.stack([r[0] for r in rows])
  n, t = tokens_NxT.shape
  cut_N = np.asarray([r[1] for r in rows], np.int32)
  last_N = np.asarray([r[2] for r in rows], np.int32)
  targets_NxT = np.concatenate([tokens_NxT[:, 1:], np.full((n, 1), pad_id, np.int32)], axis=1)
  mask_NxT = (np.arange(t)[None] < last_N[:, None]).astype(np.float32)
  fut_NxF = np.full((n, fut_len + 1), pad_id, np.int32)
  for i, (tokens, cut, last) in enumerate(rows):
    fut_NxF[i, 0] = tokens[0]
    fut_NxF[i, 1:last - cut + 1] = tokens[cut + 1:last + 1]
  return {"inputs": tokens_NxT, "targets": targets_NxT, "loss_mask": mask_NxT,
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (n, t)).copy(),
          "cut_idx": cut_N, "last_idx": last_N, "fut_inputs": fut_NxF, "fut_last": last_N - cut_N}


class CutRows:
  """Global row index -> a window (pure function of seed and index; a class so grain workers can unpickle it)."""

  def __init__(self, source, subjects, seed, ctx_len, fut_len, pad_id, salt):
    self.source, self.subjects, self.seed, self.salt = source, subjects, seed, salt
    self.ctx_len, self.fut_len, self.pad_id = ctx_len, fut_len, pad_id

  def __call__(self, index: int):
    rng = np.random.default_rng([self.seed, self.salt, int(index)])
    subject = self.subjects[int(rng.integers(len(self.subjects)))]
    k = int(rng.integers(len(subject.cut_times)))
    tokens = array_record_io.decode_tokens(self.source[subject.index], True)
    return window(tokens, subject.prefix, int(subject.ctx_end[k]), int(subject.fut_end[k]), self.ctx_len,
                  self.fut_len, self.pad_id)


class CutBatch:
  """Global batch index -> this process's rows of it as fields."""

  def __init__(self, rows: CutRows, global_batch_size: int, local: np.ndarray):
    self.rows, self.global_batch_size, self.local = rows, global_batch_size, local

  def __call__(self, batch_index: int):
    first = batch_index * self.global_batch_size
    return row_fields([self.rows(first + int(r)) for r in self.local], self.rows.pad_id, self.rows.fut_len)


class CutPointPipeline:
  """Cut-point windows over a prepared MEDS directory; also gives context-only windows at probe nodes (§7)."""

  def __init__(self, path, *, ctx_len, fut_len, horizon_days, min_ctx_events, global_batch_size, seed, workers=0,
               prefetch=2):
    self.directory = pathlib.Path(path)
    if not (self.directory / STATS_FILE).is_file():
      raise FileNotFoundError(f"data.path: {self.directory} has no {STATS_FILE}; prepare it with "
                              "scripts/prepare_meds")
    self.stats = read_json(self.directory / STATS_FILE)
    if self.stats.get("kind") != "meds" or not self.stats.get("record_times"):
      raise ValueError(f"data.path: {self.directory} is not a prepared MEDS directory with per-token times")
    self.tokenizer = load_tokenizer(self.directory, self.stats)
    self.vocab_size, self.pad_id = self.tokenizer.vocab_size, self.tokenizer.pad_id
    self.ctx_len, self.fut_len, self.seed = ctx_len, fut_len, seed
    self.global_batch_size, self.workers, self.prefetch = global_batch_size, workers, prefetch
    self.horizon_us = int(round(horizon_days * DAY_US))
    self.min_ctx = min_ctx_events
    self._sources = {}
    self.train = self._subjects(self.stats["train_split"])
    if not self.train:
      raise ValueError(f"data.horizon_days: no train subject of {self.directory} has a cut time with >= "
                       f"{min_ctx_events} context tokens and a future event within {horizon_days} days")
    self.eval_split = self.stats["eval_split"]
    self.eval = self._subjects(self.eval_split)
    if not self.eval:
      self.eval_split, self.eval = self.stats["train_split"], self.train
    self.num_train_rows = len(self.train)

  def source(self, split):
    if split not in self._sources:
      self._sources[split] = array_record_io.open_source(self.directory, self.stats["splits"][split]["shards"])
    return self._sources[split]

  def _subjects(self, split):
    if split not in self.stats["splits"]:
      return []
    source = self.source(split)
    subjects = [Subject(i, source[i], self.tokenizer, self.horizon_us, self.min_ctx) for i in range(len(source))]
    return [s for s in subjects if len(s.cut_times)]

  def rows(self, which):
    """The row function of the train stream (run seed, salt 0) or the fixed eval windows (seed 0, salt 1)."""
    if which == "train":
      return CutRows(self.source(self.stats["train_split"]), self.train, self.seed, self.ctx_len, self.fut_len,
                     self.pad_id, 0)
    return CutRows(self.source(self.eval_split), self.eval, 0, self.ctx_len, self.fut_len, self.pad_id, 1)

  @property
  def rows_per_epoch(self) -> int:
    return self.num_train_rows

  def train_batches(self, start_batch: int, rows: slice):
    """Global batches start_batch, start_batch + 1, ...: identical for any process/worker count and on resume."""
    gather = CutBatch(self.rows("train"),
                      self.global_batch_size, global_order.local_rows(self.global_batch_size, rows))
    return global_order.batches(gather, start_batch, workers=self.workers, prefetch=self.prefetch)

  def eval_batches(self, num_batches: int, rows: slice):
    """Fixed eval windows from the eval split (a different salt than train, the same every call)."""
    gather = CutBatch(self.rows("eval"), self.global_batch_size, global_order.local_rows(self.global_batch_size, rows))
    return [gather(k) for k in range(num_batches)]

  def unigram_entropy_nats(self) -> float:
    counts = np.load(self.directory / UNIGRAM_FILE)
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())

  def node_windows(self) -> "NodeWindows":
    return NodeWindows(self.directory, self.ctx_len)


class NodeWindows:
  """Context-only windows at probe nodes (§7): tokens with time <= the node, left-truncated to ctx_len keeping the
  prefix, exactly as a cut-point context is built (so the probe embedding sees no event after the node)."""

  def __init__(self, directory, ctx_len):
    self.directory = pathlib.Path(directory)
    self.stats = read_json(self.directory / STATS_FILE)
    self.tokenizer = load_tokenizer(self.directory, self.stats)
    self.ctx_len, self.pad_id = ctx_len, self.tokenizer.pad_id
    index = pq.read_table(self.directory / RECORDS_FILE, columns=["split", "record", "subject_id"]).to_pydict()
    self.record_of = {s: (sp, r) for s, sp, r in zip(index["subject_id"], index["split"], index["record"])}
    self._sources = {}

  def split_of(self, subject_id):
    return self.record_of[subject_id][0]

  def window(self, subject_id, time_us):
    """(tokens [ctx_len] padded, last_idx, context tokens unpadded and untruncated) or None when the subject has
    no body token at or before `time_us`."""
    split, record = self.record_of[subject_id]
    if split not in self._sources:
      self._sources[split] = array_record_io.open_source(self.directory, self.stats["splits"][split]["shards"])
    data = self._sources[split][record]
    tokens, times = array_record_io.decode_tokens(data, True), array_record_io.decode_times(data)
    prefix = prefix_length(tokens, self.tokenizer)
    body_end = len(tokens) - 1 if tokens[-1] == self.tokenizer.eos_id else len(tokens)
    ctx_end = prefix + int(np.searchsorted(times[prefix:body_end], time_us, side="right"))
    if ctx_end == prefix:
      return None
    start = max(prefix, ctx_end - (self.ctx_len - prefix))
    ctx = np.concatenate([tokens[:prefix], tokens[start:ctx_end]])[:self.ctx_len]
    row = np.full(self.ctx_len, self.pad_id, dtype=np.int32)
    row[:len(ctx)] = ctx
    return row, len(ctx) - 1, tokens[:ctx_end]


@registry.register("ehr_cuts")
def build(cfg_data, *, seq_len, global_batch_size, seed, prepared=None):
  path = cfg_data.path or (pathlib.Path(prepared) / PREPARED if prepared else "")
  if not path:
    raise ValueError("data.path: empty and no prepared data (train through scripts/train, or prepare with "
                     "scripts/prepare_meds and set data.path)")
  if cfg_data.ctx_len + cfg_data.fut_len != seq_len:
    raise ValueError(f"config key 'train.seq_len': must equal data.ctx_len + data.fut_len, got {seq_len}")
  return CutPointPipeline(path, ctx_len=cfg_data.ctx_len, fut_len=cfg_data.fut_len,
                          horizon_days=cfg_data.horizon_days, min_ctx_events=cfg_data.min_ctx_events,
                          global_batch_size=global_batch_size, seed=seed, workers=cfg_data.workers,
                          prefetch=cfg_data.prefetch)


@registry.preparer("ehr_cuts")
def prepare(cfg_data, directory, seed):
  """Without data.path: the §6 synthetic set (data.synth_subjects subjects, seed data.synth_seed, independent of
  the run seed so pretraining seeds share one dataset) written and prepared under `directory`. With data.path:
  nothing to write, but the directory and the horizon are checked here, because the trainer runs the preparer
  before anything lands in the workdir (a bad horizon is then one line, exit 2, nothing written)."""
  del seed
  if cfg_data.path:
    CutPointPipeline(cfg_data.path, ctx_len=cfg_data.ctx_len, fut_len=cfg_data.fut_len,
                     horizon_days=cfg_data.horizon_days, min_ctx_events=cfg_data.min_ctx_events,
                     global_batch_size=1, seed=0)
    return
  from tessera.data import meds_synth, prepare_meds
  meds_dir = meds_synth.write_dataset(pathlib.Path(directory) / "meds", cfg_data.synth_subjects,
                                      cfg_data.synth_seed)
  print(f"ehr_cuts: wrote {cfg_data.synth_subjects} synthetic subjects (seed {cfg_data.synth_seed})",
        file=sys.stderr)
  prepare_meds.prepare(["--input", str(meds_dir), "--out", str(pathlib.Path(directory) / PREPARED)])
