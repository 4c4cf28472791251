"""Surface forms: each token of a new tokenizer decomposed into the old tokenizer's ids (zett.md §3.1).

A token string (GPT-2 byte->unicode alphabet) is segmented by the old tokenizer's *model* applied directly to the
string (no pre-tokenizer), truncated to `maxlen` = 7 and right-padded with the old pad id (= its eos). Characters
whose byte is not in the old vocabulary become "extra" ids `n_src + byte` that index the hypernetwork's learned
fallback table (256 rows, one per byte: the paper keeps only the missing ones; a fixed size keeps the model's shape
independent of the tokenizer -- project default). Special tokens map to their own original id (an eos-like token
to the old eos) and are flagged, so the model overwrites their rows with the original embeddings (§3.9).
Results are cached per piece string: consecutive sampled vocabularies share most pieces (§5, last line).
"""
import dataclasses

import numpy as np
import tokenizers

from tessera.data import text_tokenizer

MAXLEN = 7
_BYTE_OF_CHAR = {char: b for b, char in text_tokenizer._byte_to_unicode().items()}


@dataclasses.dataclass
class VocabArrays:
  """Per-slot arrays of one new vocabulary padded to `n_slots` (numpy, host side)."""
  surface_NxL: np.ndarray  # int32 old ids / extra ids / pad
  special_N: np.ndarray    # int32 original id of a special token, -1 otherwise
  valid_N: np.ndarray      # bool: a real token (False: padded slot, its logit gets -1e5)
  bytes_N: np.ndarray      # int32 UTF-8 bytes the token stands for (0 for specials / padding): bits per byte


def special_tokens(tokenizer: tokenizers.Tokenizer) -> dict[int, str]:
  """{id: content} of the added special tokens."""
  return {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}


class SurfaceForms:
  """Decomposes new tokens through `old` (a tokenizers.Tokenizer); `n_src` = rows of the source table S."""

  def __init__(self, old: tokenizers.Tokenizer, n_src: int, maxlen: int = MAXLEN):
    self.old, self.n_src, self.maxlen = old, n_src, maxlen
    self.old_vocab = old.get_vocab(with_added_tokens=True)
    self.pad_id = self.old_vocab[text_tokenizer.eos_token(old)]
    self.old_specials = {content: i for i, content in special_tokens(old).items()}
    self._cache = {}

  def piece_ids(self, piece: str) -> list[int]:
    """The full (untruncated) decomposition of one non-special token string."""
    if piece in self._cache:
      return self._cache[piece]
    ids, run = [], []
    for char in piece + "\0":
      if char != "\0" and char in self.old_vocab:
        run.append(char)
        continue
      if run:
        ids += [t.id for t in self.old.model.tokenize("".join(run))]
        run = []
      if char != "\0":  # a byte the old vocabulary lacks (or a char outside the byte alphabet: its UTF-8 bytes)
        raw = [_BYTE_OF_CHAR[char]] if char in _BYTE_OF_CHAR else list(char.encode("utf-8"))
        ids += [self.n_src + b for b in raw]
    self._cache[piece] = ids
    return ids

  def special_id(self, content: str) -> int:
    if content in self.old_specials:
      return self.old_specials[content]
    if content in text_tokenizer._KNOWN_EOS_TOKENS:
      return self.pad_id
    return self.old_vocab.get(content, self.pad_id)

  def arrays(self, new: tokenizers.Tokenizer, n_slots: int) -> VocabArrays:
    """VocabArrays of `new` in `n_slots` slots; raises ValueError if the vocabulary does not fit."""
    vocab = new.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1
    if size > n_slots:
      raise ValueError(f"target vocabulary has {size} tokens, more than the configured {n_slots} slots")
    specials = special_tokens(new)
    surface = np.full((n_slots, self.maxlen), self.pad_id, np.int32)
    special = np.full((n_slots,), -1, np.int32)
    valid = np.zeros((n_slots,), bool)
    nbytes = np.zeros((n_slots,), np.int32)
    for piece, i in vocab.items():
      valid[i] = True
      if i in specials:
        special[i] = surface[i, 0] = self.special_id(piece)
        continue
      ids = self.piece_ids(piece)[:self.maxlen]
      surface[i, :len(ids)] = ids
      nbytes[i] = sum(1 if c in _BYTE_OF_CHAR else len(c.encode("utf-8")) for c in piece)
    return VocabArrays(surface, special, valid, nbytes)
