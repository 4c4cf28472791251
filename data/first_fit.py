"""First-fit packing of variable-length records into rows of fixed capacity, as a precomputed row plan.

Each record (a document, or a subject's event sequence) is cut into pieces of at most `capacity` tokens; each piece
goes into the first row with room for it. Rows end padded rather than cutting a document mid-row, and because the
plan is a pure function of the lengths, any row can be built on its own (random access, any worker, resume).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RowPlan:
  """Row r holds pieces row_starts[r]:row_starts[r+1]; piece p is tokens [start, start+length) of record p."""
  piece_record: np.ndarray
  piece_start: np.ndarray
  piece_length: np.ndarray
  row_starts: np.ndarray

  @property
  def num_rows(self) -> int:
    return len(self.row_starts) - 1

  def pieces(self, row: int) -> slice:
    return slice(int(self.row_starts[row]), int(self.row_starts[row + 1]))


def _pieces(order: np.ndarray, lengths: np.ndarray, capacity: int):
  """Records in `order`, each cut into consecutive chunks of `capacity` tokens (the last one shorter)."""
  counts = -(-lengths[order] // capacity)
  record = np.repeat(order, counts)
  chunk = np.arange(len(record)) - np.repeat(np.cumsum(counts) - counts, counts)
  start = chunk * capacity
  length = np.minimum(lengths[record] - start, capacity)
  return record, start, length


def first_fit(lengths: np.ndarray, capacity: int, order: np.ndarray | None = None) -> RowPlan:
  """Packs the records (visited in `order`, default 0..n-1) first-fit; O(n log n) via a max-tree over rows.

  A full-capacity chunk would always open a new row, so those rows are laid out directly (after the first-fit
  rows); only the one shorter tail piece per record goes through the tree.
  """
  lengths = np.asarray(lengths, dtype=np.int64)
  order = np.arange(len(lengths)) if order is None else np.asarray(order)
  order = order[lengths[order] > 0]
  record, start, length = _pieces(order, lengths, capacity)
  full = length == capacity
  tail_rows = _first_fit_rows(length[~full].tolist(), capacity)
  num_tail_rows = max(tail_rows, default=-1) + 1
  rows = np.empty(len(record), dtype=np.int64)
  rows[~full] = tail_rows
  rows[full] = num_tail_rows + np.arange(int(full.sum()))
  by_row = np.argsort(rows, kind="stable")  # within a row, pieces keep their insertion order
  row_starts = np.searchsorted(rows[by_row], np.arange(num_tail_rows + int(full.sum()) + 1))
  return RowPlan(record[by_row], start[by_row], length[by_row], row_starts)


def _first_fit_rows(needs: list[int], capacity: int) -> list[int]:
  """The row each piece lands in; rows are the leaves of a tree whose nodes hold the most room below them."""
  size = 1 << max(len(needs) - 1, 0).bit_length()
  room = [capacity] * (2 * size)  # plain ints: this loop is scalar work, where lists beat numpy indexing
  rows = []
  for need in needs:
    node = 1
    while node < size:
      node = 2 * node if room[2 * node] >= need else 2 * node + 1
    rows.append(node - size)
    room[node] -= need
    node //= 2
    while node:
      best = max(room[2 * node], room[2 * node + 1])
      if room[node] == best:
        break
      room[node] = best
      node //= 2
  return rows
