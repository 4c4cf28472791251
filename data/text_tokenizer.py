"""Text tokenizers in the Hugging Face `tokenizers` format: trained in seconds on the train split, saved as one
`tokenizer.json` that any HF-compatible tool can load (cheap to train and to swap, as ZeTT-style work needs).

All three kinds are byte-level, so every string encodes without an unknown token and decodes back exactly.
`bytes` maps byte b to id b (the embedded pipeline's ids), with `<eos>` = 256. `with_special_tokens` appends
whichever of `<eos>`, `<pad>`, `<bos>`, `<unk>` a tokenizer lacks, so a prepared directory names all four for
`transformers` (tokenizer_config.json) and pads with its own id (a pad that is also eos makes HF collators mask
every end of document).
"""

import pathlib

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from tessera.data.prepare_io import DataError

KINDS = ("bpe", "unigram", "bytes")
EOS_TOKEN, PAD_TOKEN, BOS_TOKEN, UNK_TOKEN = "<eos>", "<pad>", "<bos>", "<unk>"
_KNOWN_EOS_TOKENS = (EOS_TOKEN, "</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "[SEP]")
# Names other tokenizers use for each role, ours first (a user's tokenizer.json keeps its own).
KNOWN_TOKENS = {
    "eos_token": _KNOWN_EOS_TOKENS,
    "pad_token": (PAD_TOKEN, "[PAD]", "<|pad|>", "<|padding|>"),
    "bos_token": (BOS_TOKEN, "<s>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]"),
    "unk_token": (UNK_TOKEN, "[UNK]", "<|unk|>"),
}
_NEW_TOKENS = {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "bos_token": BOS_TOKEN, "unk_token": UNK_TOKEN}


def _byte_to_unicode() -> dict[int, str]:
  """GPT-2's printable stand-in character for each byte: the alphabet HF's ByteLevel pre-tokenizer emits."""
  printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return chars


def _byte_level(model) -> tokenizers.Tokenizer:
  tokenizer = tokenizers.Tokenizer(model)
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tokenizer.decoder = decoders.ByteLevel()
  return tokenizer


def train(kind: str, texts, vocab_size: int) -> tokenizers.Tokenizer:
  """A new tokenizer of `kind` fitted on `texts` (an iterable of str); `bytes` ignores both."""
  if kind == "bytes":
    vocab = {char: b for b, char in _byte_to_unicode().items()}
    tokenizer = _byte_level(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.add_special_tokens([EOS_TOKEN])
    return tokenizer
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  if kind == "bpe":
    tokenizer = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=alphabet,
                                  show_progress=False)
  elif kind == "unigram":
    tokenizer = _byte_level(models.Unigram())
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=alphabet,
                                      show_progress=False)
  else:
    raise DataError(f"--tokenizer: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
  tokenizer.train_from_iterator(texts, trainer)
  return tokenizer


def load_file(path: pathlib.Path) -> tokenizers.Tokenizer:
  """A user's tokenizer.json; one without an end-of-document token gets `<eos>` appended to its vocabulary."""
  try:
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
  except Exception as e:  # tokenizers raises a bare Exception for any parse error
    raise DataError(f"{path}: not a Hugging Face tokenizer.json ({str(e).splitlines()[0]})") from None
  if eos_token(tokenizer) is None:
    tokenizer.add_special_tokens([EOS_TOKEN])
  return tokenizer


def eos_token(tokenizer: tokenizers.Tokenizer) -> str | None:
  return role_token(tokenizer, "eos_token")


def role_token(tokenizer: tokenizers.Tokenizer, role: str) -> str | None:
  """The token playing `role` (eos_token, pad_token, bos_token, unk_token), by its usual names; None if absent."""
  vocab = tokenizer.get_vocab(with_added_tokens=True)
  return next((token for token in KNOWN_TOKENS[role] if token in vocab), None)


def with_special_tokens(tokenizer: tokenizers.Tokenizer) -> dict[str, str]:
  """Adds `<eos>`/`<pad>`/`<bos>`/`<unk>` where the tokenizer has no token for the role (after its vocabulary, so
  existing ids keep their meaning); returns {role: token}, with pad never the eos token."""
  for role, new in _NEW_TOKENS.items():
    if role_token(tokenizer, role) is None:
      tokenizer.add_special_tokens([new])
  return {role: role_token(tokenizer, role) for role in _NEW_TOKENS}


def transformers_config(tokenizer: tokenizers.Tokenizer) -> dict:
  """tokenizer_config.json for `transformers.AutoTokenizer.from_pretrained(dir)` (a PreTrainedTokenizerFast)."""
  return {"tokenizer_class": "PreTrainedTokenizerFast", **with_special_tokens(tokenizer),
          "clean_up_tokenization_spaces": False}


class TextTokenizer:
  """The pipeline-facing view of a tokenizer.json: int32 ids in, text out, and its end-of-document id."""

  def __init__(self, tokenizer: tokenizers.Tokenizer):
    self.hf = tokenizer
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    self.eos_id = tokenizer.token_to_id(eos_token(tokenizer))
    pad = role_token(tokenizer, "pad_token")
    self.pad_id = self.eos_id if pad is None else tokenizer.token_to_id(pad)  # older prepared dirs: pad = eos

  @classmethod
  def from_file(cls, path: pathlib.Path) -> "TextTokenizer":
    return cls(load_file(path))

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(e.ids, dtype=np.int32) for e in self.hf.encode_batch(texts, add_special_tokens=False)]

  def decode(self, ids) -> str:
    """Drops `<eos>` and ids outside the vocabulary (a model's padded logits can produce them)."""
    ids = [int(i) for i in np.asarray(ids).ravel() if 0 <= i < self.vocab_size and i != self.eos_id]
    return self.hf.decode(ids, skip_special_tokens=True)
