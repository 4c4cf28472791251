"""Byte-level tokenizer: needs no vocabulary file, so the quickstart trains on any machine with no download."""

import numpy as np

EOS_ID = 256


class ByteTokenizer:
  """ids 0..255 are the utf-8 bytes of the text; 256 marks the end of a document."""

  vocab_size = 257
  eos_id = EOS_ID

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    """Drops EOS (and any id >= 256); a byte run cut mid-character decodes with U+FFFD, never raises."""
    ids = np.asarray(ids)
    return ids[(ids >= 0) & (ids < 256)].astype(np.uint8).tobytes().decode("utf-8", errors="replace")
