"""ZeTT's small-scale corpus and the base LM's byte-level BPE, prepared automatically and cached (zett.md §8).

The corpus is the embedded one (stdlib help topics = prose, stdlib sources = code). ZeTT holds out whole files:
10% by a hash of the document name (§8 "split by file: 90% train, 10% held out"); the base LM, the hypernetwork
and every tokenizer trained for the experiments see only the 90%. The held-out 10% is where bits per byte and tokens
per byte are measured, split into prose and code.

`cached_bpe(vocab_size)` runs scripts/prepare_text's code once per (corpus text, vocab size) into a cache directory
(`data.cache_dir`, default $TESSERA_CACHE or ~/.cache/tessera) and every later run copies it: a 90% file split fed to
prepare_text, which makes its own small validation split for the base LM's eval loss. The "embedded_bpe" pipeline
(configs/zett.py:base) is this prepared directory read by the "prepared" pipeline.
"""
import hashlib
import json
import os
import pathlib
import shutil
import tempfile

from tessera.data import embedded_corpus
from tessera.data import prepare_text
from tessera.data import prepared as prepared_lib
from tessera.data import registry

HELD_OUT_PERCENT = 10
CACHE_ENV = "TESSERA_CACHE"


def _bucket(name: str) -> int:
  return int.from_bytes(hashlib.sha256(("zett:" + name).encode()).digest()[:8], "little") % 100


def split(docs=None):
  """(train, held_out) lists of embedded_corpus.Document, 90/10 by a hash of the document name (§8)."""
  docs = embedded_corpus.documents() if docs is None else docs
  held = [_bucket(d.name) < HELD_OUT_PERCENT for d in docs]
  return [d for d, h in zip(docs, held) if not h], [d for d, h in zip(docs, held) if h]


def is_prose(doc) -> bool:
  return doc.name.startswith("topic:")


def cache_root(cache_dir: str = "") -> pathlib.Path:
  root = cache_dir or os.environ.get(CACHE_ENV) or str(pathlib.Path.home() / ".cache" / "tessera")
  return pathlib.Path(root).expanduser()


def _corpus_key(docs, vocab_size: int, max_docs: int) -> str:
  digest = hashlib.sha256(repr((prepare_text.FORMAT_VERSION, "bpe", vocab_size, max_docs)).encode())
  for doc in docs:
    digest.update(doc.name.encode() + b"\0" + doc.text.encode("utf-8", "replace") + b"\0")
  return digest.hexdigest()[:16]


def train_docs(max_docs: int = 0):
  """The train split; `max_docs` > 0 keeps every prose topic and the first code files up to that many docs (CI)."""
  train, _ = split()
  if max_docs > 0:
    prose = [d for d in train if is_prose(d)]
    code = [d for d in train if not is_prose(d)]
    train = (prose + code)[:max_docs]
  return train


def cached_bpe(vocab_size: int = 8192, cache_dir: str = "", max_docs: int = 0) -> pathlib.Path:
  """A prepared directory (tokenizer.json, ArrayRecord shards, stats) of the train split with a BPE of
  `vocab_size`; built once (seconds to a minute) and reused by every run with the same corpus and size."""
  docs = train_docs(max_docs)
  out = cache_root(cache_dir) / "zett_bpe" / f"v{vocab_size}_{_corpus_key(docs, vocab_size, max_docs)}"
  if (out / "stats.json").is_file():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    corpus = pathlib.Path(tmp) / "train.jsonl"
    with corpus.open("w") as f:
      for doc in docs:
        f.write(json.dumps({"text": doc.text}) + "\n")
    staged = pathlib.Path(tmp) / "prepared"
    prepare_text.prepare(["--input", str(corpus), "--out", str(staged), "--tokenizer", "bpe",
                          "--vocab-size", str(vocab_size)])
    try:
      staged.rename(out)  # atomic; a concurrent builder that won the race leaves an identical directory
    except OSError:
      if not (out / "stats.json").is_file():
        raise
  return out


def copy_prepared(source: pathlib.Path, directory: pathlib.Path):
  for item in source.iterdir():
    if item.is_file():
      shutil.copy2(item, directory / item.name)


@registry.preparer("embedded_bpe")
def prepare(cfg_data, directory, seed):
  """Copies the cached BPE preparation into <workdir>/data (the trainer calls this once per workdir)."""
  del seed
  copy_prepared(cached_bpe(cfg_data.bpe_vocab_size, cfg_data.cache_dir, cfg_data.get("max_docs", 0)),
                pathlib.Path(directory))


@registry.register("embedded_bpe")
def build(cfg_data, *, seq_len, global_batch_size, seed, prepared=None):
  """The prepared pipeline over <workdir>/data (or, without a workdir, straight over the cache)."""
  path = prepared or cached_bpe(cfg_data.bpe_vocab_size, cfg_data.cache_dir, cfg_data.get("max_docs", 0))
  return prepared_lib.PreparedPipeline(path, seq_len=seq_len, global_batch_size=global_batch_size, seed=seed,
                                       workers=cfg_data.workers, prefetch=cfg_data.prefetch)
