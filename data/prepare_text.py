"""scripts/prepare_text: text files, folders, .jsonl or parquet -> ArrayRecord token shards + tokenizer.json + stats.

  scripts/prepare_text --input corpus/ more.jsonl --out data/mytext [--tokenizer bpe|unigram|bytes] [--vocab-size N]
  scripts/train --config configs/lm.py:small --config.data.path=data/mytext --workdir runs/mytext

Documents split into train/validation by content hash (at least one validation document); the tokenizer is trained
on the train split only (or given with --tokenizer-file). Every record is one document's ids followed by <eos>.
"""

import hashlib
import pathlib
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tessera.data import array_record_io
from tessera.data import prepare_io
from tessera.data import text_sources
from tessera.data import text_tokenizer
from tessera.data.prepare_io import DataError
from tessera.data.prepared import RECORDS_FILE, UNIGRAM_FILE

FORMAT_VERSION = 2  # 2: <pad>/<bos>/<unk> after the vocabulary, tokenizer_config.json for transformers
DEFAULT_VOCAB_SIZE = 8192
ADDED_SPECIAL_TOKENS = 3  # <pad>, <bos>, <unk> after a trained vocabulary (which has <eos> at id 0)
_ENCODE_CHUNK = 512


def parse_args(argv):
  parser = prepare_io.ArgumentParser(prog="scripts/prepare_text", description=__doc__.splitlines()[0])
  parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                      help="text files, folders (recursive), .jsonl (a text field) or .parquet (a text column)")
  parser.add_argument("--out", required=True, type=pathlib.Path, metavar="DIR",
                      help="the prepared directory (created atomically; a rerun with the same inputs is a no-op)")
  parser.add_argument("--tokenizer", default="bpe", choices=text_tokenizer.KINDS,
                      help="the tokenizer to train on the train split (default: %(default)s)")
  parser.add_argument("--vocab-size", type=prepare_io.at_least(1), default=None,
                      help=f"tokens incl. <eos>, <pad>, <bos>, <unk> (default {DEFAULT_VOCAB_SIZE}; bytes: 260)")
  parser.add_argument("--tokenizer-file", type=pathlib.Path, default=None,
                      help="use this Hugging Face tokenizer.json instead of training one")
  parser.add_argument("--text-column", default="text", help="the .jsonl field / parquet column holding the text")
  parser.add_argument("--records-per-shard", type=prepare_io.at_least(1), default=20000,
                      help="documents per ArrayRecord shard (default: %(default)s)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing different dataset in --out")
  return parser.parse_args(argv)


def _fingerprint(args, docs: list[text_sources.Document]) -> str:
  """Identifies a dataset by what determines its bytes: the options and every document's text, in order."""
  digest = hashlib.sha256(repr((FORMAT_VERSION, args.tokenizer, args.vocab_size, args.text_column,
                                args.records_per_shard)).encode())
  if args.tokenizer_file:
    digest.update(args.tokenizer_file.read_bytes())
  for doc in docs:
    encoded = doc.text.encode("utf-8")
    digest.update(len(encoded).to_bytes(8, "little") + encoded)
  return digest.hexdigest()


def _tokenizer(args, train_texts: list[str]) -> text_tokenizer.TextTokenizer:
  if args.tokenizer_file:
    tokenizer = text_tokenizer.TextTokenizer(text_tokenizer.load_file(args.tokenizer_file))
    if args.vocab_size is not None and args.vocab_size != tokenizer.vocab_size:
      raise DataError(f"{args.tokenizer_file}: has {tokenizer.vocab_size} tokens but --vocab-size is "
                      f"{args.vocab_size}")
    return _with_special_tokens(tokenizer.hf)
  vocab_size = (args.vocab_size or DEFAULT_VOCAB_SIZE) - ADDED_SPECIAL_TOKENS  # the total stays --vocab-size
  return _with_special_tokens(text_tokenizer.train(args.tokenizer, train_texts, vocab_size))


def _with_special_tokens(hf):
  text_tokenizer.with_special_tokens(hf)
  return text_tokenizer.TextTokenizer(hf)


def _encoded_records(tokenizer, texts: list[str], progress: prepare_io.Progress, counts: np.ndarray,
                     lengths: list[int]):
  """Yields each document's ids + <eos> as a record, counting tokens as it goes."""
  for first in range(0, len(texts), _ENCODE_CHUNK):
    chunk = texts[first:first + _ENCODE_CHUNK]
    encoded = [np.append(ids, tokenizer.eos_id).astype(np.int32) for ids in tokenizer.encode_batch(chunk)]
    progress.update(len(chunk))
    for ids in encoded:
      counts += np.bincount(ids, minlength=len(counts))
      lengths.append(len(ids))
      yield array_record_io.encode_record(ids)


def _check_args(args):
  """Every flag checked before any file is read: a mistake costs nothing and prints only its error."""
  prepare_io.check_out(args.out)
  if args.tokenizer_file:
    text_tokenizer.load_file(args.tokenizer_file)
  elif args.tokenizer != "bytes" and (args.vocab_size or DEFAULT_VOCAB_SIZE) < 300:
    raise DataError(f"--vocab-size: {args.vocab_size} is too small for a byte-level {args.tokenizer} (>= 300)")


def prepare(argv=None) -> dict:
  args = parse_args(argv)
  began = time.perf_counter()
  _check_args(args)
  files = text_sources.input_files(args.input)
  reading = prepare_io.Progress(len(files), "reading", "files")
  docs, empty = [], []
  for path in files:
    for doc in text_sources.documents([path], args.text_column):
      (docs if doc.text.strip() else empty).append(doc)
    reading.update()
  reading.close()
  if len(docs) < 2:
    skipped = f" ({len(empty)} empty skipped, e.g. {empty[0].where})" if empty else ""
    raise DataError(f"{' '.join(args.input)}: {len(docs)} non-empty document(s){skipped}; need at least 2 (one is "
                    "held out for validation)")
  if empty:
    prepare_io.warn(f"skipped {len(empty)} empty document(s), e.g. {empty[0].where}")
  fingerprint = _fingerprint(args, docs)
  if prepare_io.existing_dataset_matches(args.out, fingerprint, args.overwrite):
    print(f"prepare_text: {args.out} already holds this dataset; nothing to do")
    return prepare_io.read_json(args.out / prepare_io.STATS_FILE)

  is_val = text_sources.is_validation([doc.text for doc in docs])
  split_texts = {"train": [d.text for d, v in zip(docs, is_val) if not v],
                 "validation": [d.text for d, v in zip(docs, is_val) if v]}
  if not args.tokenizer_file:
    print(f"training a {args.tokenizer} tokenizer on {len(split_texts['train']):,} documents...", file=sys.stderr)
  tokenizer = _tokenizer(args, split_texts["train"])

  with prepare_io.staged_dir(args.out) as staging:
    tokenizer.hf.save(str(staging / "tokenizer.json"))
    hf_config = text_tokenizer.transformers_config(tokenizer.hf)
    prepare_io.write_json(staging / "tokenizer_config.json", hf_config)
    prepare_io.write_json(staging / "special_tokens_map.json",
                          {k: v for k, v in hf_config.items() if k.endswith("_token")})
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    index = {"split": [], "record": [], "num_tokens": []}
    splits = {}
    for split, texts in split_texts.items():
      progress = prepare_io.Progress(len(texts), f"encoding {split}", "docs")
      lengths = []
      split_counts = np.zeros_like(counts)
      shards = array_record_io.write_shards(
          staging, split, _encoded_records(tokenizer, texts, progress, split_counts, lengths), len(texts),
          args.records_per_shard)
      progress.close()
      if split == "train":
        counts = split_counts
      index["split"] += [split] * len(lengths)
      index["record"] += list(range(len(lengths)))
      index["num_tokens"] += lengths
      num_bytes = sum(len(t.encode("utf-8")) for t in texts)
      splits[split] = {"shards": shards, "documents": len(texts), "tokens": int(sum(lengths)), "bytes": num_bytes,
                       "bytes_per_token": num_bytes / max(sum(lengths) - len(texts), 1)}
    pq.write_table(pa.table(index), staging / RECORDS_FILE)
    np.save(staging / UNIGRAM_FILE, counts)
    stats = {
        "kind": "text", "format_version": FORMAT_VERSION, "fingerprint": fingerprint,
        "tokenizer": "file" if args.tokenizer_file else args.tokenizer, "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id, "record_times": False,
        "train_split": "train", "eval_split": "validation", "splits": splits,
        "documents": len(docs), "tokens": sum(s["tokens"] for s in splits.values()),
        "bytes": sum(s["bytes"] for s in splits.values()),
    }
    stats["bytes_per_token"] = stats["bytes"] / max(stats["tokens"] - len(docs), 1)
    prepare_io.write_json(staging / prepare_io.STATS_FILE, stats)
  print(f"prepare_text: wrote {args.out}: {stats['documents']:,} documents (train {splits['train']['documents']:,}, "
        f"validation {splits['validation']['documents']:,}), {stats['tokens']:,} tokens, "
        f"{stats['bytes_per_token']:.2f} bytes/token, vocab {stats['vocab_size']:,}, "
        f"{time.perf_counter() - began:.1f} s")
  return stats


def main(argv=None) -> int:
  return prepare_io.run_main(prepare, argv)


if __name__ == "__main__":
  sys.exit(main())
