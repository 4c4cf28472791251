"""One global batch sequence, read per process: the contract every random-access pipeline here keeps.

Global batch k is positions [k*B, (k+1)*B) of the row stream "epoch 0 permutation, epoch 1 permutation, ...".
Every process computes the same stream and builds only its own row slice of each batch, so P processes cover
every row of every epoch exactly once, and the whole resume state is the global batch index, whatever the number
of processes or grain workers.
"""

import sys
from typing import Callable, Iterator, Sequence

from absl import flags
import grain
import numpy as np


def shuffle_seed(seed: int) -> int:
  """Scrambles the user seed: grain shuffles epoch e with seed + e, which would make (seed, 1) == (seed + 1, 0)."""
  return int(np.random.SeedSequence(seed).generate_state(1)[0])


def row_stream(rows: Sequence, seed: int) -> grain.MapDataset:
  """The endless stream of rows, reshuffled (seeded) every epoch; position i is random-access."""
  return grain.MapDataset.source(rows).shuffle(seed=shuffle_seed(seed)).repeat()


def local_rows(global_batch_size: int, rows: slice) -> np.ndarray:
  local = np.arange(global_batch_size)[rows]
  if len(local) == 0:
    raise ValueError(f"data: row slice {rows} selects no rows of a global batch of {global_batch_size}")
  return local


class GatherBatch:
  """Global batch index -> this process's rows of it, made into model fields (a class so workers can unpickle it)."""

  def __init__(self, stream: grain.MapDataset, global_batch_size: int, local: np.ndarray,
               to_fields: Callable[[list], dict[str, np.ndarray]]):
    self._stream, self._global_batch_size, self._local, self._to_fields = stream, global_batch_size, local, to_fields

  def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
    first = batch_index * self._global_batch_size
    return self._to_fields([self._stream[first + int(r)] for r in self._local])


def batches(gather: GatherBatch, start_batch: int, *, workers: int, prefetch: int) -> Iterator[dict]:
  """Batches start_batch, start_batch + 1, ... forever; identical for any worker count (each is a pure function)."""
  dataset = grain.MapDataset.range(start_batch, sys.maxsize).map(gather).to_iter_dataset(
      grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch))
  if workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags; a plain script never parsed them
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                               per_worker_buffer_size=max(prefetch, 1)))
  return _closing(iter(dataset))


def _closing(iterator) -> Iterator[dict[str, np.ndarray]]:
  """Yields from a grain iterator and releases its worker processes when the consumer stops."""
  try:
    yield from iterator
  finally:
    iterator.close()
