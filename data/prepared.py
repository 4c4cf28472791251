"""The "prepared" pipeline: a directory written by scripts/prepare_text or scripts/prepare_meds, packed first-fit.

`--config.data.path=DIR` selects it. Rows are planned once (first-fit over the records in a seeded order) and then
reshuffled every epoch; each row keeps its documents apart with segment ids and per-segment positions, and the tail
of a row that no piece fits is padding (segment 0, no loss).
"""

import pathlib
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq

from tessera.data import array_record_io
from tessera.data import first_fit
from tessera.data import global_order
from tessera.data import registry
from tessera.data.prepare_io import STATS_FILE, DataError, read_json

RECORDS_FILE = "records.parquet"
STATS_KEYS = ("kind", "vocab_size", "pad_id", "record_times", "train_split", "eval_split", "splits")
UNIGRAM_FILE = "unigram_counts.npy"


class PackedRows:
  """Row r of a split's plan as int32 [3, row_len]: tokens, segment ids (0 = padding), per-segment positions.

  Every token id read from disk is checked against the vocabulary on the host, before anything could clip it: an id
  outside [0, vocab_size) (a shard written with another tokenizer, a damaged file) is a DataError naming the shard
  and record, where the model's table lookup would otherwise read a clipped or arbitrary row.
  """

  def __init__(self, source, plan: first_fit.RowPlan, row_len: int, pad_id: int, with_times: bool, vocab_size: int,
               where: tuple[pathlib.Path, list[str]]):
    self._source, self._plan, self._row_len, self._pad_id, self._with_times = (
        source, plan, row_len, pad_id, with_times)
    self._vocab_size, self._where = vocab_size, where

  def __len__(self) -> int:
    return self._plan.num_rows

  def __getitem__(self, row: int) -> np.ndarray:
    plan, pieces = self._plan, self._plan.pieces(int(row))
    row_3xL = np.zeros((3, self._row_len), dtype=np.int32)
    row_3xL[0] = self._pad_id
    at = 0
    for segment, (record, start, length) in enumerate(zip(plan.piece_record[pieces].tolist(),
                                                          plan.piece_start[pieces].tolist(),
                                                          plan.piece_length[pieces].tolist()), start=1):
      tokens = array_record_io.decode_tokens(self._source[record], self._with_times)
      if tokens.size and (tokens.min() < 0 or tokens.max() >= self._vocab_size):
        self._reject(record, tokens)
      row_3xL[0, at:at + length] = tokens[start:start + length]
      row_3xL[1, at:at + length] = segment
      row_3xL[2, at:at + length] = np.arange(length)
      at += length
    return row_3xL

  def _reject(self, record: int, tokens: np.ndarray):
    directory, shards = self._where
    shard, index = array_record_io.locate(directory, shards, record)
    position = int(np.flatnonzero((tokens < 0) | (tokens >= self._vocab_size))[0])
    raise DataError(f"{directory / shard}: record {index} holds token id {int(tokens[position])} at position "
                    f"{position}, outside the vocabulary [0, {self._vocab_size}) the directory was prepared with "
                    "(written with another tokenizer, or damaged); re-run the prepare command")


def row_fields(rows: list[np.ndarray]) -> dict[str, np.ndarray]:
  """Next-token fields; no loss on padding or where the target belongs to another segment than the input."""
  rows_Nx3xL = np.stack(rows)
  tokens_NxL, segments_NxL, positions_NxL = rows_Nx3xL[:, 0], rows_Nx3xL[:, 1], rows_Nx3xL[:, 2]
  same_segment_NxT = (segments_NxL[:, :-1] == segments_NxL[:, 1:]) & (segments_NxL[:, :-1] > 0)
  return {
      "inputs": tokens_NxL[:, :-1],
      "targets": tokens_NxL[:, 1:],
      "segment_ids": segments_NxL[:, :-1],
      "positions": positions_NxL[:, :-1],
      "loss_mask": same_segment_NxT.astype(np.float32),
  }


def load_tokenizer(directory: pathlib.Path, stats: dict):
  """The tokenizer the directory was prepared with; its size must be the one the records were written with."""
  if stats["kind"] == "meds" and stats.get("tokenizer") == "text":
    from tessera.data import meds_text  # jepa_ehr.md §4.3: serialized text + byte-level BPE
    path = directory / meds_text.TOKENIZER_FILE
    tokenizer = meds_text.MedsTextTokenizer.from_file(path)
  elif stats["kind"] == "meds":
    from tessera.data import meds_tokenize  # only MEDS directories need it
    path = directory / meds_tokenize.VOCAB_FILE
    tokenizer = meds_tokenize.EventTokenizer.from_file(path)
  else:
    from tessera.data import text_tokenizer
    path = directory / "tokenizer.json"
    tokenizer = text_tokenizer.TextTokenizer.from_file(path)
  if tokenizer.vocab_size != stats["vocab_size"]:
    raise ValueError(f"{path}: vocabulary size {tokenizer.vocab_size} does not match the prepared data's "
                     f"{stats['vocab_size']} ({directory / STATS_FILE}); re-run the prepare command")
  return tokenizer


class PreparedPipeline:
  """Train/eval batches over a prepared directory; building it reads only the small index files."""

  def __init__(self, path, *, seq_len: int, global_batch_size: int, seed: int, workers: int = 0,
               prefetch: int = 2):
    self.directory = pathlib.Path(path)
    if not (self.directory / STATS_FILE).is_file():
      raise FileNotFoundError(f"data.path: {self.directory} has no {STATS_FILE}; prepare it with "
                              "scripts/prepare_text or scripts/prepare_meds")
    self.stats = read_json(self.directory / STATS_FILE)
    missing = [k for k in STATS_KEYS if k not in self.stats]
    if missing:
      raise ValueError(f"{self.directory / STATS_FILE}: no {missing[0]!r} (not written by a prepare command; "
                       "re-run it)")
    self.tokenizer = load_tokenizer(self.directory, self.stats)
    self.vocab_size = self.tokenizer.vocab_size
    self.seq_len, self.global_batch_size, self.seed = seq_len, global_batch_size, seed
    self.workers, self.prefetch = workers, prefetch
    try:
      index = pq.read_table(self.directory / RECORDS_FILE, columns=["split", "num_tokens"]).to_pydict()
    except Exception as e:  # noqa: BLE001  (pyarrow raises several types for a damaged file)
      raise ValueError(f"{self.directory / RECORDS_FILE}: unreadable ({str(e).splitlines()[0][:200]})") from None
    splits, lengths = np.asarray(index["split"]), np.asarray(index["num_tokens"], dtype=np.int64)
    self._records = {name: int((splits == name).sum()) for name in set(index["split"])}
    train_split, eval_split = self.stats["train_split"], self.stats["eval_split"]
    train_lengths, eval_lengths = lengths[splits == train_split], lengths[splits == eval_split]
    order = np.random.default_rng(global_order.shuffle_seed(seed)).permutation(len(train_lengths))
    self._train_rows = self._packed(train_split, first_fit.first_fit(train_lengths, seq_len + 1, order))
    self._eval_rows = self._packed(eval_split, first_fit.first_fit(eval_lengths, seq_len + 1))
    self.num_train_rows, self.num_eval_rows = len(self._train_rows), len(self._eval_rows)
    if self.num_train_rows < global_batch_size:
      raise ValueError(f"data: global_batch_size={global_batch_size} exceeds the {self.num_train_rows} train rows "
                       f"of {self.directory} at seq_len={seq_len}")
    if self.num_eval_rows == 0:
      raise ValueError(f"data: {self.directory} has no {eval_split} tokens to evaluate on")
    self._unigram = self._unigram_counts()

  def _unigram_counts(self) -> np.ndarray:
    """Read at build time (used at the end of a run): a damaged file fails before anything is written."""
    path = self.directory / UNIGRAM_FILE
    try:
      counts = np.load(path)
    except (OSError, ValueError) as e:
      raise ValueError(f"{path}: unreadable ({str(e).splitlines()[0][:200]})") from None
    if counts.shape != (self.vocab_size,) or counts.sum() <= 0:
      raise ValueError(f"{path}: shape {counts.shape}, expected ({self.vocab_size},) token counts")
    return counts

  def _packed(self, split: str, plan: first_fit.RowPlan) -> PackedRows:
    shards = self.stats["splits"][split]["shards"]
    source = array_record_io.open_source(self.directory, shards, self._records.get(split, 0))
    return PackedRows(source, plan, self.seq_len + 1, self.stats["pad_id"], self.stats["record_times"],
                      self.vocab_size, (self.directory, shards))

  @property
  def rows_per_epoch(self) -> int:
    """An epoch is one pass over every packed train row; batches run across epoch ends without a gap."""
    return self.num_train_rows

  def train_batches(self, start_batch: int, rows: slice) -> Iterator[dict[str, np.ndarray]]:
    """Global batches start_batch, start_batch + 1, ... forever; each holds only `rows` of the global batch."""
    gather = global_order.GatherBatch(global_order.row_stream(self._train_rows, self.seed), self.global_batch_size,
                                      global_order.local_rows(self.global_batch_size, rows), row_fields)
    return global_order.batches(gather, start_batch, workers=self.workers, prefetch=self.prefetch)

  def eval_batches(self, num_batches: int, rows: slice) -> list[dict[str, np.ndarray]]:
    """Evaluation batches in record order, the same every call; row indices wrap when the split is short."""
    local = global_order.local_rows(self.global_batch_size, rows)
    return [row_fields([self._eval_rows[int(r)] for r in (k * self.global_batch_size + local) % self.num_eval_rows])
            for k in range(num_batches)]

  def unigram_entropy_nats(self) -> float:
    """Entropy of the train token frequencies (counted at prepare time): the loss of a context-free model."""
    counts = self._unigram
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())


@registry.register("prepared")
def build(cfg_data, *, seq_len: int, global_batch_size: int, seed: int) -> PreparedPipeline:
  return PreparedPipeline(cfg_data.path, seq_len=seq_len, global_batch_size=global_batch_size, seed=seed,
                          workers=cfg_data.workers, prefetch=cfg_data.prefetch)
