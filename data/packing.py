"""Stream packing: documents (each closed by EOS) are concatenated and cut into rows of seq_len + 1 tokens.

No padding, so every token is trained on; a row may hold pieces of several documents, which the model keeps
apart with segment ids (attention) and per-segment positions, and the loss with loss_mask.
"""

import numpy as np


def pack_stream(docs: list[np.ndarray], seq_len: int, eos_id: int) -> np.ndarray:
  """[num_rows, seq_len + 1] int32 rows cut from the EOS-joined stream; the tail shorter than a row is dropped.

  A stream shorter than one row is repeated until it fills one, so a tiny split still yields a batch.
  """
  pieces = []
  for doc in docs:
    pieces += [doc, [eos_id]]
  stream = np.concatenate(pieces).astype(np.int32)
  row_len = seq_len + 1
  if len(stream) < row_len:
    stream = np.tile(stream, -(-row_len // len(stream)))
  num_rows = len(stream) // row_len
  return stream[:num_rows * row_len].reshape(num_rows, row_len)


def segments_and_positions(rows_NxL: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Segment ids 1, 2, 3, ... per document piece in a row (EOS ends its own document), positions from 0 per piece."""
  is_eos_NxL = rows_NxL == eos_id
  starts_NxL = np.zeros_like(is_eos_NxL)
  starts_NxL[:, 0] = True
  starts_NxL[:, 1:] = is_eos_NxL[:, :-1]
  segment_ids_NxL = np.cumsum(starts_NxL, axis=1, dtype=np.int32)
  index_NxL = np.broadcast_to(np.arange(rows_NxL.shape[1], dtype=np.int32), rows_NxL.shape)
  start_index_NxL = np.maximum.accumulate(np.where(starts_NxL, index_NxL, 0), axis=1)
  return segment_ids_NxL, index_NxL - start_index_NxL


def batch_fields(rows_NxL: np.ndarray, eos_id: int) -> dict[str, np.ndarray]:
  """Model inputs from rows: next-token targets, no loss where the target starts a new document."""
  segment_ids_NxL, positions_NxL = segments_and_positions(rows_NxL, eos_id)
  return {
      "inputs": rows_NxL[:, :-1],
      "targets": rows_NxL[:, 1:],
      "segment_ids": segment_ids_NxL[:, :-1],
      "positions": positions_NxL[:, :-1],
      "loss_mask": (segment_ids_NxL[:, :-1] == segment_ids_NxL[:, 1:]).astype(np.float32),
  }
