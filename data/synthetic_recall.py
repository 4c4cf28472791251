"""The "synthetic_recall" pipeline (shared/specs/trimkv.md §9, issue 12): associative recall and copy tasks in
embedded-corpus filler, mixed with plain corpus text so held-out perplexity means something.

Every row is one example of seq_len + 1 tokens, drawn by its own seeded generator from (seed, split, row index):
random access, nothing cached, the resume state is the global batch index (as data/global_order.py).
  text    (`data.recall.text_fraction`, 1/3): a row of the packed embedded corpus (train docs; eval: held-out docs).
  recall  (half the rest): `pairs` "<kI> <vJ>" pairs at random places in corpus-text filler, then `queries`
          blocks "<q> <kI> <vJ>" of distinct stored keys at the end; the target after each query key is its value.
  copy    (the other half): "<span> x1..xL </span>" (L = `span` value symbols) in the first half of the filler,
          then "<copy> x1..xL" at the end; the targets after <copy> are the span, token by token.
Filler is a random window of the corpus text with EOS removed (one document segment per task row). The base LM
trains with next-token CE (spec §9: "ordinary CE on a synthetic mixture"); `data.recall.filler_loss` (default True)
keeps the loss on every position of a task row, False puts it on the task's answers only (§9's filler is random
noise that carries no loss signal; here the text rows still train the LM on corpus text, and the recall answers,
~3% of the tokens otherwise, are not drowned by filler text: a project choice so the base learns the tasks at
CPU scale). `data.recall.answer_weight` (default 1) is the loss weight (loss_mask value) of the task answers:
with the answers ~9% of the loss next to the corpus-text rows, a base at CPU scale sits on the recall plateau
(answer CE = log 155 after 600 steps, measured); the base config weights them 8x. `data.recall.keys` / `values`: how many of the key / value symbols the tasks
draw from (all by default; the §9 study uses 32 each, since rarely seen symbols slowed the base's recall).
The tokenizer is bytes plus the task symbols, 512 ids (§9's vocabulary), so text prompts encode and symbols
are written as tags: `scripts/sample --prompt "<span><v3><v9></span> some text <copy>"`.
"""

import re

import numpy as np

from tessera.data import byte_tokenizer
from tessera.data import embedded_corpus
from tessera.data import global_order
from tessera.data import packing
from tessera.data import registry

NUM_KEYS, NUM_VALUES = 96, 155
SYMBOLS = ("q", "copy", "span", "/span") + tuple(f"k{i}" for i in range(NUM_KEYS)) + tuple(
    f"v{i}" for i in range(NUM_VALUES))
FIRST_SYMBOL = byte_tokenizer.EOS_ID + 1
_SYMBOL_IDS = {name: FIRST_SYMBOL + i for i, name in enumerate(SYMBOLS)}
TASKS = ("text", "recall", "copy")
DEFAULTS = dict(pairs=4, queries=3, span=8, text_fraction=1 / 3, filler_loss=True, answer_weight=1.0,
                keys=NUM_KEYS, values=NUM_VALUES)
_SPLITS = {"train": 0, "eval": 1}


class RecallTokenizer:
  """ids 0..255: utf-8 bytes; 256: EOS; 257..511: the task symbols, written `<q>`, `<copy>`, `<span>`, `</span>`,
  `<k0>`..`<k95>`, `<v0>`..`<v154>` in text."""

  eos_id = byte_tokenizer.EOS_ID
  first_symbol = FIRST_SYMBOL
  vocab_size = FIRST_SYMBOL + len(SYMBOLS)
  _ids = _SYMBOL_IDS
  _tag = re.compile("<(" + "|".join(re.escape(s) for s in sorted(SYMBOLS, key=len, reverse=True)) + ")>")

  def id(self, name):
    return self._ids[name]

  def encode(self, text: str) -> np.ndarray:
    ids, at = [], 0
    for m in self._tag.finditer(text):
      ids += list(text[at:m.start()].encode("utf-8"))
      ids.append(self._ids[m.group(1)])
      at = m.end()
    ids += list(text[at:].encode("utf-8"))
    return np.asarray(ids, np.int32)

  def decode(self, ids) -> str:
    out, run = [], bytearray()
    for i in np.asarray(ids).tolist():
      if 0 <= i < 256:
        run.append(i)
        continue
      out.append(run.decode("utf-8", errors="replace"))
      run = bytearray()
      if self.first_symbol <= i < self.vocab_size:
        out.append(f"<{SYMBOLS[i - self.first_symbol]}>")
    out.append(run.decode("utf-8", errors="replace"))
    return "".join(out)


def _options(cfg_data):
  """data.recall.{pairs, queries, span, text_fraction} (defaults above); a bad value names its key."""
  given = cfg_data.get("recall")
  opts = {**DEFAULTS, **(given.to_dict() if given is not None else {})}
  for key in ("pairs", "queries", "span"):
    if not isinstance(opts[key], int) or opts[key] < 1:
      raise ValueError(f"config key 'data.recall.{key}': must be an int >= 1, got {opts[key]!r}")
  for key, most in (("keys", NUM_KEYS), ("values", NUM_VALUES)):
    if not isinstance(opts[key], int) or not 1 <= opts[key] <= most:
      raise ValueError(f"config key 'data.recall.{key}': the symbols used, an int in [1, {most}], got {opts[key]!r}")
  if opts["queries"] > opts["pairs"] or opts["pairs"] > opts["keys"]:
    raise ValueError(f"config key 'data.recall.queries': queries ({opts['queries']}) must be <= pairs "
                     f"({opts['pairs']}) <= keys ({opts['keys']})")
  if not (isinstance(opts["answer_weight"], (int, float)) and 0 < opts["answer_weight"] < float("inf")):
    raise ValueError(f"config key 'data.recall.answer_weight': must be a number > 0, got {opts['answer_weight']!r}")
  if not isinstance(opts["filler_loss"], bool):
    raise ValueError(f"config key 'data.recall.filler_loss': must be a bool, got {opts['filler_loss']!r}")
  if not (isinstance(opts["text_fraction"], (int, float)) and 0 <= opts["text_fraction"] <= 1):
    raise ValueError(f"config key 'data.recall.text_fraction': must be in [0, 1], got {opts['text_fraction']!r}")
  return opts


class Example:
  """One row: tokens [L + 1], task, answer_mask [L] (the target at t is an answer), needed [L] (t holds a
  stored key/value or span token)."""
  __slots__ = ("tokens", "task", "answer_mask", "needed")

  def __init__(self, tokens, task, answer_mask, needed):
    self.tokens, self.task, self.answer_mask, self.needed = tokens, task, answer_mask, needed


class SyntheticRecallPipeline:
  """Train/eval batches of the §9 mixture; `examples(task, n)` gives held-out rows of one task (scripts/eval_kv)."""

  def __init__(self, *, seq_len, global_batch_size, seed, options, workers=0, prefetch=2):
    self.tokenizer = RecallTokenizer()
    self.vocab_size = self.tokenizer.vocab_size
    self.seq_len, self.global_batch_size, self.seed = seq_len, global_batch_size, seed
    self.workers, self.prefetch, self.options = workers, prefetch, options
    tail = 3 * options["queries"] + 2 * options["pairs"] + 2 * options["span"] + 4
    if seq_len + 1 < 2 * tail:
      raise ValueError(f"config key 'train.seq_len': {seq_len} is too short for the recall/copy tasks "
                       f"(data.recall: need >= {2 * tail - 1})")
    train_docs, val_docs = embedded_corpus.split(embedded_corpus.documents())
    encode = self.tokenizer.encode
    self._text = {s: packing.pack_stream([encode(d.text) for d in docs], seq_len, self.tokenizer.eos_id)
                  for s, docs in (("train", train_docs), ("eval", val_docs))}
    self._filler = {s: np.concatenate([encode(d.text) for d in docs]).astype(np.int32)
                    for s, docs in (("train", train_docs), ("eval", val_docs))}

  # --- rows ---

  def example(self, split, index, task=None, seed=None):
    """Row `index` of `split` ("train" | "eval"), deterministic in (seed, split, index); `task` forces one;
    `seed` overrides the pipeline's (held-out rows shared by runs of different seeds)."""
    rng = np.random.default_rng((self.seed if seed is None else seed, _SPLITS[split], index))
    draw = rng.random()
    if task is None:
      rest = (1 - self.options["text_fraction"]) / 2
      task = "text" if draw < self.options["text_fraction"] else ("recall" if draw < 1 - rest else "copy")
    L = self.seq_len
    if task == "text":
      rows = self._text[split]
      tokens = rows[rng.integers(len(rows))]
      return Example(tokens, task, np.zeros(L, bool), np.zeros(L, bool))
    filler = self._filler[split]
    start = rng.integers(len(filler) - L - 1)
    tokens = filler[start:start + L + 1].copy()
    answer, needed = np.zeros(L + 1, bool), np.zeros(L + 1, bool)
    (self._recall if task == "recall" else self._copy)(rng, tokens, answer, needed)
    return Example(tokens, task, answer[1:], needed[:-1])

  def _recall(self, rng, tokens, answer, needed):
    o, tok = self.options, self.tokenizer
    keys = rng.choice(o["keys"], o["pairs"], replace=False)
    values = rng.integers(o["values"], size=o["pairs"])
    end = len(tokens) - 3 * o["queries"]
    slots = np.sort(rng.choice((end - 2) // 2, o["pairs"], replace=False)) * 2 + 1
    for key, value, at in zip(keys, values, slots):
      tokens[at], tokens[at + 1] = tok.id(f"k{key}"), tok.id(f"v{value}")
      needed[at:at + 2] = True
    for q, pick in enumerate(rng.choice(o["pairs"], o["queries"], replace=False)):
      at = end + 3 * q
      tokens[at:at + 3] = tok.id("q"), tok.id(f"k{keys[pick]}"), tok.id(f"v{values[pick]}")
      answer[at + 2] = True  # the target of position at + 1 (the key)

  def _copy(self, rng, tokens, answer, needed):
    n, tok = self.options["span"], self.tokenizer
    span = [tok.id(f"v{v}") for v in rng.integers(self.options["values"], size=n)]
    end = len(tokens) - n - 1
    at = int(rng.integers(1, end // 2 - n - 1))
    tokens[at:at + n + 2] = [tok.id("span"), *span, tok.id("/span")]
    needed[at + 1:at + n + 1] = True
    tokens[end:] = [tok.id("copy"), *span]
    answer[end + 1:] = True

  def _fields(self, split, indices, task=None, seed=None):
    examples = [self.example(split, int(i), task, seed) for i in indices]
    return self.fields(examples), examples

  def fields(self, examples):
    """The trainer's batch fields of a list of Examples (loss on the answers only in task rows when
    data.recall.filler_loss is False; answers weighted by data.recall.answer_weight)."""
    fields = packing.batch_fields(np.stack([e.tokens for e in examples]), self.tokenizer.eos_id)
    answers = np.stack([e.answer_mask for e in examples])
    if not self.options["filler_loss"]:
      task_rows = np.array([e.task != "text" for e in examples])
      fields["loss_mask"] = np.where(task_rows[:, None], answers, fields["loss_mask"]).astype(np.float32)
    fields["loss_mask"] = np.where(answers, self.options["answer_weight"] * fields["loss_mask"],
                                   fields["loss_mask"]).astype(np.float32)
    return fields

  # --- the trainer's interface ---

  @property
  def rows_per_epoch(self) -> int:
    return len(self._text["train"])

  def train_batches(self, start_batch, rows):
    gather = global_order.GatherBatch(_Rows(self), self.global_batch_size,
                                      global_order.local_rows(self.global_batch_size, rows), self.fields)
    return global_order.batches(gather, start_batch, workers=self.workers, prefetch=self.prefetch)

  def eval_batches(self, num_batches, rows):
    """Held-out mixture (eval split: held-out corpus text and filler), the same every call."""
    local = global_order.local_rows(self.global_batch_size, rows)
    return [self._fields("eval", k * self.global_batch_size + local)[0] for k in range(num_batches)]

  def examples(self, task, count, split="eval", seed=None):
    """(fields [count, L], answer_mask [count, L], needed [count, L]) of `count` rows of one task."""
    fields, examples = self._fields(split, range(count), task, seed)
    return fields, np.stack([e.answer_mask for e in examples]), np.stack([e.needed for e in examples])

  def unigram_entropy_nats(self):
    counts = np.bincount(self._text["train"].ravel(), minlength=self.vocab_size)
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())


class _Rows:
  """Global row index -> train Example (picklable for grain workers)."""

  def __init__(self, pipeline):
    self._pipeline = pipeline

  def __getitem__(self, index):
    return self._pipeline.example("train", int(index))


@registry.register("synthetic_recall")
def build(cfg_data, *, seq_len, global_batch_size, seed):
  return SyntheticRecallPipeline(seq_len=seq_len, global_batch_size=global_batch_size, seed=seed,
                                 options=_options(cfg_data), workers=cfg_data.workers, prefetch=cfg_data.prefetch)
