"""Per-batch UnigramLM tokenizer sampling (zett.md §5), on the host, seeded by (seed, step).

Candidates are the substrings (1..15 chars, starting every 4th char) of every pre-token of the texts in a FIFO
queue of recent chunks; score = count x byte length. p = score / sum, one LogNormal(ln 1e-5, 4) noise scale per
tokenizer, p~ = p + N(0, sigma^2), log-score = ln p~ (or -1e5), sort, keep the top pieces; the 256 byte symbols
(score = ln of the smallest probability kept) and whitespace runs (space / newline / tab, 2..15 long, score 0) are
always in and count toward `n_total`; `<eos>` sits at id 0 on top, as in the base tokenizer. The list becomes a
`tokenizers` Unigram model directly (no EM).

Pre-tokenizer: the base tokenizer's (GPT-2 regex + byte-level, no prefix space) for counting and for encoding, so
every tokenizer sees the same bytes (project default; the paper prepends a space).
"""
import collections
import math

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from tessera.data import text_tokenizer

STRIDE, MAX_PIECE = 4, 15
WHITESPACE = ("Ġ", "Ċ", "ĉ")  # space, newline, tab in the byte-level alphabet
NOISE_MU, NOISE_SIGMA = math.log(1e-5), 4.0
_PRE = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
BYTE_CHARS = tuple(text_tokenizer._byte_to_unicode()[b] for b in range(256))
WHITESPACE_RUNS = tuple(c * n for c in WHITESPACE for n in range(2, MAX_PIECE + 1))
_ALWAYS = frozenset(BYTE_CHARS) | frozenset(WHITESPACE_RUNS)


def count_chunk(texts) -> collections.Counter:
  """Substring counts of one chunk of texts (before the byte-length weighting)."""
  counts = collections.Counter()
  for text in texts:
    for piece, _ in _PRE.pre_tokenize_str(text):
      n = len(piece)
      for start in range(0, n, STRIDE):
        for end in range(start + 1, min(start + MAX_PIECE, n) + 1):
          counts[piece[start:end]] += 1
  return counts


def pieces_from_counts(counts, n_total: int, rng: np.random.Generator) -> list[tuple[str, float]]:
  """The noisy top-`n_total` (piece, log-score) list from summed substring counts (§5)."""
  cands = [s for s, c in counts.items() if c > 0 and s not in _ALWAYS]
  cands.sort()  # a fixed order: the Counter's insertion order depends on the queue's history
  score_C = np.array([counts[s] * len(s) for s in cands], np.float64)
  p_C = score_C / max(score_C.sum(), 1.0)
  sigma = math.exp(rng.normal(NOISE_MU, NOISE_SIGMA))
  noisy_C = p_C + rng.normal(0.0, sigma, size=p_C.shape)
  with np.errstate(divide="ignore", invalid="ignore"):
    log_C = np.where(noisy_C > 0, np.log(np.maximum(noisy_C, 1e-300)), -1e5)
  n_pieces = n_total - len(BYTE_CHARS) - len(WHITESPACE_RUNS)
  keep = np.argsort(-log_C, kind="stable")[:max(n_pieces, 0)]
  kept = [(cands[i], float(log_C[i])) for i in keep]
  finite = [s for _, s in kept if s > -1e5]
  byte_score = min(finite) if finite else -20.0
  return kept + [(c, byte_score) for c in BYTE_CHARS] + [(w, 0.0) for w in WHITESPACE_RUNS]


def unigram_tokenizer(pieces) -> tokenizers.Tokenizer:
  """A byte-level Unigram tokenizer with `<eos>` at id 0 and `pieces` after it, in order."""
  vocab = [(text_tokenizer.EOS_TOKEN, 0.0)] + list(pieces)
  tokenizer = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=None, byte_fallback=False))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.add_special_tokens([text_tokenizer.EOS_TOKEN])
  return tokenizer


def step_rng(seed: int, step: int, stream: int) -> np.random.Generator:
  """Independent streams per (seed, step, purpose): 0 texts, 1 noise; step < 0: the initial queue chunks."""
  return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, step + (1 << 20), stream]))


class QueueSampler:
  """Sampled tokenizer of step k = f(queue after pushing batch k's texts, rng(seed, k)), the queue holding the
  chunks of steps k-Q+1..k (the initial chunks -Q..-1 before that). A pure function of k: resuming at k rebuilds
  the queue from its chunks, so the data-iterator state (the batch index) fully determines it. Chunk counts and the
  running sum are memoised, so consecutive steps cost one chunk count each."""

  def __init__(self, chunk_texts, *, seed: int, n_total: int, queue_chunks: int):
    self.chunk_texts, self.seed, self.n_total, self.q = chunk_texts, seed, n_total, queue_chunks
    self._counts, self._total, self._at = {}, None, None

  def _chunk(self, j):
    if j not in self._counts:
      self._counts[j] = count_chunk(self.chunk_texts(j))
      for old in [k for k in self._counts if k < j - 2 * self.q]:
        del self._counts[old]
    return self._counts[j]

  def counts(self, k):
    if self._at == k - 1:
      self._total.update(self._chunk(k))
      popped = self._chunk(k - self.q)
      self._total.subtract(popped)
      for piece in popped:  # drop what left the window: the sum stays the size of the queue's substrings
        if self._total[piece] <= 0:
          del self._total[piece]
    elif self._at != k:
      self._total = collections.Counter()
      for j in range(k - self.q + 1, k + 1):
        self._total.update(self._chunk(j))
    self._at = k
    return self._total

  def pieces(self, k):
    return pieces_from_counts(self.counts(k), self.n_total, step_rng(self.seed, k, 1))

  def tokenizer(self, k) -> tokenizers.Tokenizer:
    return unigram_tokenizer(self.pieces(k))
