"""The "zett" pipeline: text under a freshly sampled UnigramLM tokenizer every batch, plus that tokenizer's
surface forms (zett.md §5, §3.1), built in the host process.

Batch k (= train step k) is a pure function of (seed, k): B random spans of `span_chars` characters from the train
split (tessera.data.zett_corpus), pushed onto the FIFO queue whose chunks are the spans of steps k-Q+1..k (initial
chunks before step 0), the tokenizer sampled from the queue's substring scores with rng (seed, k)
(tessera.data.zett_sampler). Resuming at batch k rebuilds the queue from its chunks, so the checkpointed data
position (the batch index) is the whole iterator state; nothing else needs saving. The first `identity_steps`
batches are identity-stage batches (§4: `n_slots` old ids sampled uniformly, surface form = the id alone).

The vocabulary travels split over the batch rows so every field has the batch as its leading axis (the trainer's
batch sharding): surface [B, n/B, L], special [B, n/B], valid [B, n/B]. Eval batches: held-out spans under one
fixed sampled tokenizer (seeded apart from every training step), so eval losses are comparable across steps.
The old tokenizer is the base run's (init.workdir's data/tokenizer.json, copied into this run's data/ once).
"""
import pathlib
import queue as queue_lib
import threading

import ml_collections
import numpy as np

from tessera.data import registry
from tessera.data import text_tokenizer
from tessera.data import zett_corpus
from tessera.data import zett_sampler
from tessera.data import zett_surface
from tessera.data.prepared import UNIGRAM_FILE

EVAL_SEED_OFFSET = 1_000_003
DEFAULTS = dict(n_total=2048, queue_chunks=16, span_chars=2048, identity_steps=300)


def add_keys(c, identity_fraction=1 / 6):
  """data.name = zett and its keys; identity_steps follows train.steps (a fraction of it)."""
  c.data.name = "zett"
  c.data.bpe_vocab_size = 8192
  c.data.cache_dir = ""
  c.data.max_docs = 0
  c.data.zett = ml_collections.ConfigDict(dict(DEFAULTS))
  c.data.zett.identity_steps = (c.train.get_ref("steps") * identity_fraction).to_int()
  c.data.zett.n_slots = c.model.zett.get_ref("n_slots")
  c.data.base_workdir = c.init.get_ref("workdir")  # its data/tokenizer.json is the old tokenizer
  return c


def spans(docs, rng, count, span_chars):
  out = []
  for i in rng.integers(0, len(docs), count):
    text = docs[int(i)].text
    start = int(rng.integers(0, max(len(text) - span_chars, 0) + 1))
    out.append(text[start:start + span_chars])
  return out


class ZettPipeline:

  def __init__(self, directory, cfg_data, *, seq_len, global_batch_size, seed):
    z = cfg_data.zett
    self.directory = pathlib.Path(directory)
    self.tokenizer = text_tokenizer.TextTokenizer.from_file(self.directory / "tokenizer.json")
    self.vocab_size = self.tokenizer.vocab_size
    self.seq_len, self.global_batch_size, self.seed = seq_len, global_batch_size, seed
    self.n_total, self.n_slots, self.identity_steps = z.n_total, z.n_slots, z.identity_steps
    self.span_chars, self.prefetch = z.span_chars, cfg_data.prefetch
    if self.n_total + 1 > self.n_slots:
      raise ValueError(f"config key 'data.zett.n_total': {self.n_total} (+1 for <eos>) exceeds model.zett.n_slots="
                       f"{self.n_slots}")
    if self.n_total < len(zett_sampler.BYTE_CHARS) + len(zett_sampler.WHITESPACE_RUNS):
      raise ValueError(f"config key 'data.zett.n_total': {self.n_total} is below the 298 bytes + whitespace runs")
    n_src = -(-self.vocab_size // 128) * 128
    self.surface = zett_surface.SurfaceForms(self.tokenizer.hf, n_src)
    self.pad_id = self.surface.pad_id
    self.train_docs = [d for d in zett_corpus.train_docs(cfg_data.get("max_docs", 0)) if d.text.strip()]
    self.held_out = [d for d in zett_corpus.split()[1] if d.text.strip()]
    self.sampler = zett_sampler.QueueSampler(self.chunk_texts, seed=seed, n_total=self.n_total,
                                             queue_chunks=z.queue_chunks)
    self._eval_sampler = zett_sampler.QueueSampler(self.chunk_texts, seed=seed + EVAL_SEED_OFFSET,
                                                   n_total=self.n_total, queue_chunks=z.queue_chunks)
    self._lock = threading.Lock()

  def chunk_texts(self, k):
    """The spans of step k (k < 0: the initial queue chunks)."""
    return spans(self.train_docs, zett_sampler.step_rng(self.seed, k, 0), self.global_batch_size, self.span_chars)

  # ---- batches ----

  def _vocab_fields(self, arrays: zett_surface.VocabArrays):
    B, L = self.global_batch_size, self.surface.maxlen
    return {"surface": arrays.surface_NxL.reshape(B, -1, L), "special": arrays.special_N.reshape(B, -1),
            "valid": arrays.valid_N.astype(np.int32).reshape(B, -1),
            "pad_id": np.full((B,), self.pad_id, np.int32)}

  def text_fields(self, tokenizer, texts, arrays):
    """inputs/targets/loss_mask/target_bytes for `texts` under `tokenizer`: the first seq_len + 1 tokens."""
    B, T = len(texts), self.seq_len
    rows = np.full((B, T + 1), self.pad_id, np.int32)
    mask = np.zeros((B, T), np.float32)
    for b, enc in enumerate(tokenizer.encode_batch(texts, add_special_tokens=False)):
      ids = enc.ids[:T + 1]
      rows[b, :len(ids)] = ids
      mask[b, :max(len(ids) - 1, 0)] = 1.0
    return {"inputs": rows[:, :-1], "targets": rows[:, 1:], "loss_mask": mask,
            "target_bytes": arrays.bytes_N[rows[:, 1:]].astype(np.float32)}

  def identity_batch(self, k):
    rng = zett_sampler.step_rng(self.seed, k, 2)
    n = min(self.n_slots, self.vocab_size)
    ids = rng.choice(self.vocab_size, size=n, replace=False)
    surface = np.full((self.n_slots, self.surface.maxlen), self.pad_id, np.int32)
    surface[:n, 0] = ids
    valid = np.zeros((self.n_slots,), bool)
    valid[:n] = True
    arrays = zett_surface.VocabArrays(surface, np.full((self.n_slots,), -1, np.int32), valid,
                                      np.zeros((self.n_slots,), np.int32))
    B, T = self.global_batch_size, self.seq_len
    zeros = np.zeros((B, T), np.int32)
    return {**self._vocab_fields(arrays), "inputs": zeros, "targets": zeros,
            "loss_mask": np.zeros((B, T), np.float32), "target_bytes": np.zeros((B, T), np.float32),
            "stage": np.ones((B,), np.int32), "step": np.full((B,), k, np.int32)}

  def sampled_batch(self, k):
    with self._lock:
      tokenizer = self.sampler.tokenizer(k)
    arrays = self.surface.arrays(tokenizer, self.n_slots)
    return {**self._vocab_fields(arrays), **self.text_fields(tokenizer, self.chunk_texts(k), arrays),
            "stage": np.zeros((self.global_batch_size,), np.int32),
            "step": np.full((self.global_batch_size,), k, np.int32)}

  def batch(self, k):
    """Global batch k (all rows)."""
    return self.identity_batch(k) if k < self.identity_steps else self.sampled_batch(k)

  def train_batches(self, start_batch, rows):
    """Batches start_batch, ... forever (this process's `rows`), made ahead by one thread (`data.prefetch`)."""
    take = lambda batch: {k: v[rows] for k, v in batch.items()}
    if not self.prefetch:
      k = start_batch
      while True:
        yield take(self.batch(k))
        k += 1
    ready = queue_lib.Queue(maxsize=self.prefetch)
    stop = threading.Event()

    def work():
      k = start_batch
      while not stop.is_set():
        item = take(self.batch(k))
        while not stop.is_set():
          try:
            ready.put(item, timeout=0.1)
            break
          except queue_lib.Full:
            continue
        k += 1

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
      while True:
        yield ready.get()
    finally:
      stop.set()

  def eval_tokenizer(self):
    with self._lock:
      return self._eval_sampler.tokenizer(0)

  def eval_batches(self, num_batches, rows):
    tokenizer = self.eval_tokenizer()
    arrays = self.surface.arrays(tokenizer, self.n_slots)
    out = []
    for k in range(num_batches):
      texts = spans(self.held_out, zett_sampler.step_rng(self.seed + EVAL_SEED_OFFSET, k, 3),
                    self.global_batch_size, self.span_chars)
      batch = {**self._vocab_fields(arrays), **self.text_fields(tokenizer, texts, arrays),
               "stage": np.zeros((self.global_batch_size,), np.int32),
               "step": np.full((self.global_batch_size,), -1, np.int32)}
      out.append({key: v[rows] for key, v in batch.items()})
    return out

  def unigram_entropy_nats(self):
    counts = np.load(self.directory / UNIGRAM_FILE)
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())


@registry.preparer("zett")
def prepare(cfg_data, directory, seed):
  """The base run's own prepared data (`data.base_workdir`, which follows init.workdir): the old tokenizer must be
  the one the frozen LM was trained with. Without a base run (smoke tests): the cached BPE."""
  base = pathlib.Path(cfg_data.get("base_workdir", "") or "") / "data"
  if cfg_data.get("base_workdir", "") and (base / "tokenizer.json").is_file():
    zett_corpus.copy_prepared(base, pathlib.Path(directory))
  elif cfg_data.get("base_workdir", ""):
    raise ValueError(f"config key 'init.workdir': {base.parent} has no data/tokenizer.json (the base LM's "
                     "tokenizer; train it with configs/zett.py:base)")
  else:
    zett_corpus.prepare(cfg_data, directory, seed)


@registry.register("zett")
def build(cfg_data, *, seq_len, global_batch_size, seed, prepared=None):
  """Over <workdir>/data; without a workdir (scripts/eval on a run): the base run's data, else the cache."""
  base = pathlib.Path(cfg_data.get("base_workdir", "") or "") / "data"
  if prepared is None and cfg_data.get("base_workdir", "") and (base / "tokenizer.json").is_file():
    prepared = base
  directory = prepared or zett_corpus.cached_bpe(cfg_data.bpe_vocab_size, cfg_data.cache_dir,
                                                 cfg_data.get("max_docs", 0))
  return ZettPipeline(directory, cfg_data, seq_len=seq_len, global_batch_size=global_batch_size, seed=seed)
