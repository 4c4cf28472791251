"""The corpus every CPython 3.11+ install carries: the stdlib's help topics plus a fixed list of stdlib sources.

It lets the quickstart train a real language model (prose + code, ~4.7 MB) with nothing downloaded. The list
names packages/modules that exist from 3.11 on; a name that is a module in one version and a package in another
(`string` in 3.14) is read either way. Text differs slightly between Python versions, the recipe does not.
"""

import dataclasses
import hashlib
import os
import pathlib

from pydoc_data import topics as pydoc_topics

STDLIB_DIR = pathlib.Path(os.__file__).parent
SOURCE_NAMES = (
    "json", "email", "collections", "asyncio", "unittest", "logging", "http", "urllib", "importlib",
    "multiprocessing", "xmlrpc", "html", "wsgiref", "concurrent", "tomllib", "zoneinfo", "re", "xml", "sqlite3",
    "dbm", "argparse", "dataclasses", "functools", "typing", "inspect", "textwrap", "string", "random",
    "statistics", "fractions", "heapq", "bisect", "enum", "contextlib", "shutil", "tempfile", "subprocess",
    "threading", "queue", "csv", "configparser", "difflib", "pprint",
)
_SKIPPED_DIRS = frozenset({"test", "tests", "__pycache__"})
VALIDATION_PERCENT = 2


@dataclasses.dataclass(frozen=True)
class Document:
  name: str  # "topic:<key>" or "stdlib:<path relative to the stdlib dir>"; the split hashes this
  text: str


def source_paths(stdlib_dir: pathlib.Path = STDLIB_DIR) -> list[pathlib.Path]:
  """Sorted *.py of each listed package (recursively, tests excluded) or the module file itself."""
  paths = []
  for name in SOURCE_NAMES:
    package_dir, module_file = stdlib_dir / name, stdlib_dir / f"{name}.py"
    if package_dir.is_dir():
      paths += sorted(p for p in package_dir.rglob("*.py")
                      if not _SKIPPED_DIRS & set(p.relative_to(stdlib_dir).parts))
    elif module_file.is_file():
      paths.append(module_file)
  if not paths:
    raise FileNotFoundError(f"no stdlib .py sources under {stdlib_dir} (a sources-stripped Python install?)")
  return paths


def documents() -> list[Document]:
  """One document per help topic (sorted by key), then one per source file, in `source_paths` order."""
  docs = [Document(f"topic:{key}", pydoc_topics.topics[key]) for key in sorted(pydoc_topics.topics)]
  for path in source_paths():
    docs.append(Document(f"stdlib:{path.relative_to(STDLIB_DIR).as_posix()}",
                         path.read_text(encoding="utf-8", errors="replace")))
  return docs


def _name_bucket(name: str) -> int:
  """A stable 0..99 bucket from the document name (Python's hash() is salted per process)."""
  return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little") % 100


def split(docs: list[Document]) -> tuple[list[Document], list[Document]]:
  """(train, validation) by name hash, ~2% validation; the lowest-bucket document if the hash picks none."""
  buckets = [_name_bucket(doc.name) for doc in docs]
  is_val = [bucket < VALIDATION_PERCENT for bucket in buckets]
  if not any(is_val):
    is_val[min(range(len(docs)), key=lambda i: (buckets[i], docs[i].name))] = True
  train = [doc for doc, val in zip(docs, is_val) if not val]
  validation = [doc for doc, val in zip(docs, is_val) if val]
  return train, validation
