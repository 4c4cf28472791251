"""The "embedded" pipeline: stdlib docs + sources, byte tokens, stream-packed rows, one seeded global order.

Global batch k is rows [k*B, (k+1)*B) of the stream "epoch 0 permutation, epoch 1 permutation, ...". Every
process computes the same stream and reads only its own row slice of each batch, so P processes cover each
batch exactly once, and the whole resume state is the global batch index -- whatever the process or worker count.
"""

import functools
from typing import Iterator

import numpy as np

from tessera.data import byte_tokenizer
from tessera.data import embedded_corpus
from tessera.data import global_order
from tessera.data import packing
from tessera.data import registry


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

  def train_batches(self, start_batch: int, rows: slice) -> Iterator[dict[str, np.ndarray]]:
    """Global batches start_batch, start_batch + 1, ... forever; each holds only `rows` of the global batch."""
    eos_id = self.tokenizer.eos_id
    gather = global_order.GatherBatch(
        global_order.row_stream(self._train_rows, self.seed), self.global_batch_size,
        global_order.local_rows(self.global_batch_size, rows),
        functools.partial(_fields_from_rows, eos_id=eos_id))
    return global_order.batches(gather, start_batch, workers=self.workers, prefetch=self.prefetch)

  def eval_batches(self, num_batches: int, rows: slice) -> list[dict[str, np.ndarray]]:
    """Validation batches in corpus order, the same every call; indices wrap when the split is short."""
    local_rows = global_order.local_rows(self.global_batch_size, rows)
    return [packing.batch_fields(self._val_rows[(k * self.global_batch_size + local_rows) % self.num_val_rows],
                                 self.tokenizer.eos_id)
            for k in range(num_batches)]

  def unigram_entropy_nats(self) -> float:
    """Entropy of the train token frequencies: the loss a model reaches by ignoring context."""
    counts = np.bincount(self._train_rows.ravel(), minlength=self.vocab_size)
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())


def _fields_from_rows(rows, eos_id):
  return packing.batch_fields(np.stack(rows), eos_id)


@registry.register("embedded")
def build(cfg_data, *, seq_len: int, global_batch_size: int, seed: int) -> EmbeddedPipeline:
  return EmbeddedPipeline(seq_len=seq_len, global_batch_size=global_batch_size, seed=seed,
                          workers=cfg_data.workers, prefetch=cfg_data.prefetch)
