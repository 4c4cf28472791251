"""The "embedded" pipeline: stdlib docs + sources, byte tokens, stream-packed rows, one seeded global order.

Global batch k is rows [k*B, (k+1)*B) of the stream "epoch 0 permutation, epoch 1 permutation, ...". Every
process computes the same stream and reads only its own row slice of each batch, so P processes cover each
batch exactly once, and the whole resume state is the global batch index -- whatever the process or worker count.
"""

import sys
from typing import Iterator

from absl import flags
import grain
import numpy as np

from tessera.data import byte_tokenizer
from tessera.data import embedded_corpus
from tessera.data import packing
from tessera.data import registry


def _shuffle_seed(seed: int) -> int:
  """Scrambles the user seed: grain shuffles epoch e with seed + e, which would make (seed, 1) == (seed + 1, 0)."""
  return int(np.random.SeedSequence(seed).generate_state(1)[0])


class _GatherBatch:
  """Global batch index -> this process's rows of it, as model fields (a class so workers can unpickle it)."""

  def __init__(self, row_stream: grain.MapDataset, global_batch_size: int, local_rows: np.ndarray, eos_id: int):
    self._row_stream = row_stream
    self._global_batch_size = global_batch_size
    self._local_rows = local_rows
    self._eos_id = eos_id

  def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
    first = batch_index * self._global_batch_size
    rows_bxL = np.stack([self._row_stream[first + int(r)] for r in self._local_rows])
    return packing.batch_fields(rows_bxL, self._eos_id)


class EmbeddedPipeline:
  """Train/eval batches over the embedded corpus; built once per process (~0.3 s, nothing cached on disk)."""

  def __init__(self, *, seq_len: int, global_batch_size: int, seed: int, workers: int = 0, prefetch: int = 2):
    self.tokenizer = byte_tokenizer.ByteTokenizer()
    self.vocab_size = self.tokenizer.vocab_size
    self.seq_len = seq_len
    self.global_batch_size = global_batch_size
    self.seed = seed
    self.workers = workers
    self.prefetch = prefetch
    train_docs, val_docs = embedded_corpus.split(embedded_corpus.documents())
    eos_id = self.tokenizer.eos_id
    self._train_rows = packing.pack_stream([self.tokenizer.encode(d.text) for d in train_docs], seq_len, eos_id)
    self._val_rows = packing.pack_stream([self.tokenizer.encode(d.text) for d in val_docs], seq_len, eos_id)
    self.num_train_docs, self.num_val_docs = len(train_docs), len(val_docs)
    self.num_train_rows, self.num_val_rows = len(self._train_rows), len(self._val_rows)
    if self.num_train_rows < global_batch_size:
      raise ValueError(f"data: global_batch_size={global_batch_size} exceeds the {self.num_train_rows} train rows "
                       f"of the embedded corpus at seq_len={seq_len}")

  @property
  def rows_per_epoch(self) -> int:
    """An epoch is one pass over every packed train row; batches run across epoch ends without a gap."""
    return self.num_train_rows

  def _local_rows(self, rows: slice) -> np.ndarray:
    local_rows = np.arange(self.global_batch_size)[rows]
    if len(local_rows) == 0:
      raise ValueError(f"data: row slice {rows} selects no rows of a global batch of {self.global_batch_size}")
    return local_rows

  def train_batches(self, start_batch: int, rows: slice) -> Iterator[dict[str, np.ndarray]]:
    """Global batches start_batch, start_batch + 1, ... forever; each holds only `rows` of the global batch."""
    row_stream = grain.MapDataset.source(self._train_rows).shuffle(seed=_shuffle_seed(self.seed)).repeat()
    gather = _GatherBatch(row_stream, self.global_batch_size, self._local_rows(rows), self.tokenizer.eos_id)
    batches = grain.MapDataset.range(start_batch, sys.maxsize).map(gather).to_iter_dataset(
        grain.ReadOptions(num_threads=1 if self.prefetch else 0, prefetch_buffer_size=self.prefetch))
    if self.workers > 0:
      _mark_absl_flags_parsed()
      batches = batches.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.workers, per_worker_buffer_size=max(self.prefetch, 1)))
    return _closing(iter(batches))

  def eval_batches(self, num_batches: int, rows: slice) -> list[dict[str, np.ndarray]]:
    """Validation batches in corpus order, the same every call; indices wrap when the split is short."""
    local_rows = self._local_rows(rows)
    return [packing.batch_fields(self._val_rows[(k * self.global_batch_size + local_rows) % self.num_val_rows],
                                 self.tokenizer.eos_id)
            for k in range(num_batches)]

  def unigram_entropy_nats(self) -> float:
    """Entropy of the train token frequencies: the loss a model reaches by ignoring context."""
    counts = np.bincount(self._train_rows.ravel(), minlength=self.vocab_size)
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())


def _closing(iterator) -> Iterator[dict[str, np.ndarray]]:
  """Yields from a grain iterator and releases its worker processes when the consumer stops."""
  try:
    yield from iterator
  finally:
    iterator.close()


def _mark_absl_flags_parsed():
  """grain's worker processes read absl flags; a trainer without absl.app.run has not parsed them."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@registry.register("embedded")
def build(cfg_data, *, seq_len: int, global_batch_size: int, seed: int) -> EmbeddedPipeline:
  return EmbeddedPipeline(seq_len=seq_len, global_batch_size=global_batch_size, seed=seed,
                          workers=cfg_data.workers, prefetch=cfg_data.prefetch)
