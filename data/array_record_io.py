"""Token records in ArrayRecord shards: the on-disk format of every prepared dataset.

A record is raw little-endian bytes: int32 token ids, optionally followed by one int64 timestamp (microseconds)
per token (MEDS). Raw arrays cost nothing to decode, and `group_size:1` keeps every record randomly readable.
"""

import pathlib
from typing import Iterable

from array_record.python import array_record_module
import grain
import numpy as np

SHARD_SUFFIX = ".array_record"


def shard_names(prefix: str, num_shards: int) -> list[str]:
  return [f"{prefix}-{i:05d}-of-{num_shards:05d}{SHARD_SUFFIX}" for i in range(num_shards)]


def write_shards(out_dir: pathlib.Path, prefix: str, records: Iterable[bytes], num_records: int,
                 records_per_shard: int) -> list[str]:
  """Writes `num_records` records in order into ceil(n / records_per_shard) shards; returns the shard names."""
  num_shards = max(-(-num_records // records_per_shard), 1)
  names = shard_names(prefix, num_shards)
  records = iter(records)
  for shard, name in enumerate(names):
    writer = array_record_module.ArrayRecordWriter(str(out_dir / name), "group_size:1")
    for _ in range(min(records_per_shard, num_records - shard * records_per_shard)):
      writer.write(next(records))
    writer.close()
  return names


def encode_record(tokens: np.ndarray, times_us: np.ndarray | None = None) -> bytes:
  data = np.asarray(tokens, dtype="<i4").tobytes()
  if times_us is not None:
    data += np.asarray(times_us, dtype="<i8").tobytes()
  return data


def decode_tokens(record: bytes, with_times: bool) -> np.ndarray:
  count = len(record) // (12 if with_times else 4)
  return np.frombuffer(record, dtype="<i4", count=count)


def decode_times(record: bytes) -> np.ndarray:
  count = len(record) // 12
  return np.frombuffer(record, dtype="<i8", count=count, offset=4 * count)


def open_source(directory: pathlib.Path, names: list[str], num_records: int | None = None
                ) -> grain.sources.ArrayRecordDataSource:
  """One random-access source over the shards in order (record i of the split = index i). Each shard's index is
  read first, so a missing or damaged shard is a ValueError naming it (not a reader crash mid-training)."""
  counts = [_count_records(directory / name) for name in names]
  if num_records is not None and sum(counts) != num_records:
    raise ValueError(f"{directory / names[0]}: the shards {names[0]}... hold {sum(counts)} records but the index "
                     f"lists {num_records} (damaged or replaced; re-run the prepare command)")
  return grain.sources.ArrayRecordDataSource([str(directory / name) for name in names])


def locate(directory: pathlib.Path, names: list[str], index: int) -> tuple[str, int]:
  """(shard name, record within it) of record `index` of the split the shards hold in order (for error messages)."""
  for name in names:
    count = _count_records(directory / name)
    if index < count:
      return name, index
    index -= count
  raise IndexError(f"record {index} is past the end of {names}")


def _count_records(path: pathlib.Path) -> int:
  if not path.is_file():
    raise ValueError(f"{path}: ArrayRecord shard missing (re-run the prepare command)")
  try:
    reader = array_record_module.ArrayRecordReader(str(path))
    count = reader.num_records()
    reader.close()  # a damaged file fails here (its reader never opened)
  except RuntimeError as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else "damaged or truncated"
    raise ValueError(f"{path}: not a readable ArrayRecord shard ({reason})") from None
  return count
