"""scripts/prepare_meds: a MEDS dataset -> per-subject event-token sequences in ArrayRecord, vocab.json, labels.

  scripts/prepare_meds --input ../shared/data/mimic-iv-demo-meds --out data/mimic-demo
  scripts/train --config configs/lm.py:small --config.data.path=data/mimic-demo --workdir runs/ehr

  scripts/prepare_meds --input ../shared/data/mimic-iv-demo-meds --out data/mimic-text --tokenizer text

Each record is one subject: int32 token ids followed by one int64 timestamp (us) per token. `--tokenizer codes`
(default, jepa_ehr.md §4.2): event tokens, vocabulary and value deciles in vocab.json. `--tokenizer text` (§4.3,
tessera.data.meds_text): smb-utils-style text per calendar day through a byte-level BPE in tokenizer.json. Either
is fitted on the `train` split of metadata/subject_splits.parquet only. The input is checked against the
`meds` package's schemas (data, codes, subject splits, dataset.json; recorded in stats.json under "meds"). Derived
probe labels go to DIR/labels/<task>.parquet, with the label files the input carries (labels/<task>.parquet or the
MEDS task_labels/<task>/ layout, in the MEDS label schema) next to them; a built-in task whose codes the data lacks
is skipped with a one-line message.
"""

import hashlib
import pathlib
import sys
import time

import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tessera.data import array_record_io
from tessera.data import meds_labels
from tessera.data import meds_schema
from tessera.data import meds_text
from tessera.data import meds_tokenize
from tessera.data import prepare_io
from tessera.data.prepare_io import DataError
from tessera.data.prepared import RECORDS_FILE, UNIGRAM_FILE

FORMAT_VERSION = 1
SPLIT_ORDER = ("train", "tuning", "held_out")
LARGE_TRAIN_SUBJECTS = 1000
TOKENIZERS = ("codes", "text")


def parse_args(argv):
  parser = prepare_io.ArgumentParser(prog="scripts/prepare_meds", description=__doc__.splitlines()[0])
  parser.add_argument("--input", required=True, type=pathlib.Path, metavar="MEDS_DIR",
                      help="a MEDS dataset (data/**/*.parquet, metadata/codes.parquet, "
                           "metadata/subject_splits.parquet)")
  parser.add_argument("--out", required=True, type=pathlib.Path, metavar="DIR",
                      help="the prepared directory (created atomically; a rerun with the same inputs is a no-op)")
  parser.add_argument("--min-subjects", type=prepare_io.at_least(0), default=0,
                      help=f"train subjects a code needs to get its own token (default: 2, or 100 with >= "
                           f"{LARGE_TRAIN_SUBJECTS} train subjects)")
  parser.add_argument("--tokenizer", choices=TOKENIZERS, default="codes",
                      help="codes: event tokens (default); text: serialized text per day + byte-level BPE")
  parser.add_argument("--text-vocab-size", type=prepare_io.at_least(300), default=8192,
                      help="BPE ids in all, specials included, for --tokenizer text (default: 8192)")
  parser.add_argument("--records-per-shard", type=prepare_io.at_least(1), default=1000,
                      help="subjects per ArrayRecord shard")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing different dataset in --out")
  return parser.parse_args(argv)


def _fingerprint(args, meds_dir: pathlib.Path) -> str:
  # `codes` keeps the key it always had (directories prepared before --tokenizer existed stay valid).
  key = (FORMAT_VERSION, args.min_subjects, args.records_per_shard)
  if args.tokenizer != "codes":
    key += (args.tokenizer, args.text_vocab_size)
  digest = hashlib.sha256(repr(key).encode())
  for path in sorted(p for p in meds_dir.rglob("*") if p.is_file() and p.suffix in (".parquet", ".json")):
    digest.update(str(path.relative_to(meds_dir)).encode() + path.read_bytes())
  return digest.hexdigest()


def prepare(argv=None) -> dict:
  args = parse_args(argv)
  began = time.perf_counter()
  prepare_io.check_out(args.out)
  meds_dir = args.input
  events = meds_schema.read_events(meds_dir)
  subjects = np.unique(events.subject_id)
  split_of = meds_schema.read_splits(meds_dir, subjects)
  codes_rows = meds_schema.check_codes_metadata(meds_dir)
  dataset_metadata = meds_schema.read_dataset_metadata(meds_dir)
  input_labels = meds_labels.read_input_labels(meds_dir, subjects)
  split_names = sorted(set(split_of.values()), key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 3, s))
  if "train" not in split_names:
    raise DataError(f"{meds_dir / meds_schema.SPLITS_FILE}: column 'split': no subject is in 'train'")
  train_subjects = np.asarray([s for s, split in split_of.items() if split == "train"], dtype=np.int64)
  if not args.min_subjects:
    args.min_subjects = 100 if len(train_subjects) >= LARGE_TRAIN_SUBJECTS else 2
  fingerprint = _fingerprint(args, meds_dir)
  if prepare_io.existing_dataset_matches(args.out, fingerprint, args.overwrite):
    print(f"prepare_meds: {args.out} already holds this dataset; nothing to do")
    return prepare_io.read_json(args.out / prepare_io.STATS_FILE)

  if args.tokenizer == "text":
    print(f"training a {args.text_vocab_size}-id byte-level BPE on {len(train_subjects):,} train subjects' text...",
          file=sys.stderr)
    serializer = meds_text.Serializer(events, meds_text.read_units(meds_dir))
    hf = meds_text.fit(serializer, train_subjects, args.text_vocab_size)
    tokenizer = meds_text.MedsTextTokenizer(hf)
    subject_tokens = meds_text.SubjectTextTokenizer(tokenizer, serializer)
  else:
    print(f"fitting the vocabulary on {len(train_subjects):,} train subjects (min_subjects={args.min_subjects})...",
          file=sys.stderr)
    vocab = meds_tokenize.fit(events, np.isin(events.subject_id, train_subjects), args.min_subjects)
    tokenizer = meds_tokenize.EventTokenizer(vocab)
    subject_tokens = meds_tokenize.SubjectTokenizer(tokenizer, events)
  skipped_tasks = {}
  label_tables = {**meds_labels.derive(events, skipped_tasks), **input_labels}

  with prepare_io.staged_dir(args.out) as staging:
    if args.tokenizer == "text":
      (staging / meds_text.TOKENIZER_FILE).write_text(hf.to_str(pretty=True))
    else:
      prepare_io.write_json(staging / meds_tokenize.VOCAB_FILE, vocab)
    index = {"split": [], "record": [], "subject_id": [], "num_tokens": [], "first_time": [], "last_time": []}
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    splits, skipped = {}, 0
    progress = prepare_io.Progress(len(subjects), "tokenizing subjects", "subjects")
    for split in split_names:
      sequences = []
      for subject in sorted(s for s, name in split_of.items() if name == split):
        sequence = subject_tokens.subject(subject)
        progress.update()
        if sequence is None:
          skipped += 1
          continue
        sequences.append((subject, *sequence))
      if not sequences:
        continue
      shards = array_record_io.write_shards(staging, split, (array_record_io.encode_record(tokens, times)
                                                             for _, tokens, times in sequences),
                                            len(sequences), args.records_per_shard)
      for record, (subject, tokens, times) in enumerate(sequences):
        index["split"].append(split)
        index["record"].append(record)
        index["subject_id"].append(subject)
        index["num_tokens"].append(len(tokens))
        index["first_time"].append(int(times[0]))
        index["last_time"].append(int(times[-1]))
        if split == "train":
          counts += np.bincount(tokens, minlength=tokenizer.vocab_size)
      splits[split] = {"shards": shards, "subjects": len(sequences),
                       "tokens": int(sum(len(t) for _, t, _ in sequences))}
    progress.close()
    if skipped:
      prepare_io.warn(f"{skipped} subject(s) have no timed events besides birth; left out")
    table = pa.table(index)
    for column in ("first_time", "last_time"):
      table = table.set_column(table.schema.get_field_index(column), column,
                               table.column(column).cast(pa.timestamp("us")))
    pq.write_table(table, staging / RECORDS_FILE)
    np.save(staging / UNIGRAM_FILE, counts)
    meds_labels.write(label_tables, staging / "labels")
    eval_split = next((s for s in ("tuning", "held_out") if s in splits), "train")
    seconds = time.perf_counter() - began
    stats = {
        "kind": "meds", "format_version": FORMAT_VERSION, "fingerprint": fingerprint, "tokenizer": args.tokenizer,
        "source": str(meds_dir), "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
        "pad_id": tokenizer.pad_id, "record_times": True, "train_split": "train", "eval_split": eval_split,
        "splits": splits, "subjects": int(sum(s["subjects"] for s in splits.values())), "events": len(events),
        "tokens": int(sum(s["tokens"] for s in splits.values())), "min_subjects": args.min_subjects,
        **({"text_vocab_size": args.text_vocab_size} if args.tokenizer == "text" else {}),
        "labels": sorted(label_tables), "labels_from_input": sorted(input_labels), "labels_skipped": skipped_tasks,
        "meds": {"schema_package": f"meds {meds.__version__}", "dataset": dataset_metadata,
                 "codes_metadata_rows": codes_rows},
        "seconds": seconds, "events_per_second": len(events) / seconds,
    }
    prepare_io.write_json(staging / prepare_io.STATS_FILE, stats)
  print(f"prepare_meds: wrote {args.out}: {stats['subjects']:,} subjects ("
        + ", ".join(f"{name} {s['subjects']:,}" for name, s in splits.items())
        + f"), {stats['events']:,} events -> {stats['tokens']:,} tokens, vocab {stats['vocab_size']:,}, "
        f"{len(stats['labels'])} label tasks, {seconds:.1f} s ({stats['events_per_second']:,.0f} events/s)")
  return stats


def main(argv=None) -> int:
  return prepare_io.run_main(prepare, argv)


if __name__ == "__main__":
  sys.exit(main())
