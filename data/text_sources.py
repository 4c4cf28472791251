"""Documents from the inputs a user has: text files, folders, `.jsonl` (a `text` field) and parquet (a text column).

A document is a whole `.txt`-like file, one `.jsonl` line or one parquet row. Paths are read in the order given,
folders recursively in sorted order, so the same inputs always give the same document sequence.
"""

import dataclasses
import hashlib
import json
import pathlib
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from tessera.data.prepare_io import DataError

VALIDATION_PERCENT = 1


@dataclasses.dataclass(frozen=True)
class Document:
  where: str  # "file", "file:line N" or "file:row N", for messages
  text: str


def input_files(paths: list[str]) -> list[pathlib.Path]:
  """The files behind the given paths (folders expanded, hidden files skipped); an empty result is an error."""
  files = []
  for raw in paths:
    path = pathlib.Path(raw)
    if path.is_dir():
      files += sorted(p for p in path.rglob("*")
                      if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    elif path.is_file():
      files.append(path)
    else:
      raise DataError(f"{path}: no such file or directory")
  if not files:
    raise DataError(f"{' '.join(paths)}: no input files")
  return files


def documents(files: list[pathlib.Path], text_column: str = "text") -> Iterator[Document]:
  for path in files:
    if path.suffix == ".jsonl":
      yield from _jsonl_documents(path, text_column)
    elif path.suffix == ".parquet":
      yield from _parquet_documents(path, text_column)
    else:
      yield Document(str(path), _read_text(path))


def _read_text(path: pathlib.Path) -> str:
  try:
    return path.read_bytes().decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: byte {e.start} is not valid UTF-8 (is it a binary file?)") from None


def _jsonl_documents(path: pathlib.Path, field: str) -> Iterator[Document]:
  for line_number, line in enumerate(_read_text(path).splitlines(), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}: line {line_number}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict) or field not in record:
      raise DataError(f"{path}: line {line_number}: no {field!r} field")
    if not isinstance(record[field], str):
      raise DataError(f"{path}: line {line_number}: field {field!r} is {type(record[field]).__name__}, not a string")
    yield Document(f"{path}:line {line_number}", record[field])


def _parquet_documents(path: pathlib.Path, column: str) -> Iterator[Document]:
  try:
    parquet = pq.ParquetFile(path)
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"{path}: unreadable parquet ({str(e).splitlines()[0]})") from None
  schema = parquet.schema_arrow
  if column not in schema.names:
    raise DataError(f"{path}: column {column!r} missing (columns: {', '.join(schema.names)})")
  if not (pa.types.is_string(schema.field(column).type) or pa.types.is_large_string(schema.field(column).type)):
    raise DataError(f"{path}: column {column!r} has type {schema.field(column).type}, expected string")
  row = 0
  for batch in parquet.iter_batches(columns=[column]):
    for text in batch.column(0).to_pylist():
      if text is None:
        raise DataError(f"{path}: column {column!r}: row {row} is null")
      yield Document(f"{path}:row {row}", text)
      row += 1


def _hash_bucket(text: str) -> int:
  """A stable 0..99 bucket from the document's content (Python's hash() is salted per process)."""
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") % 100


def is_validation(texts: list[str]) -> list[bool]:
  """~1% of documents by content hash; if the hash picks none, the document with the lowest full hash."""
  flags = [_hash_bucket(text) < VALIDATION_PERCENT for text in texts]
  if not any(flags):
    flags[min(range(len(texts)), key=lambda i: hashlib.sha256(texts[i].encode("utf-8")).digest())] = True
  return flags
