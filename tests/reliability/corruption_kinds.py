"""The 13 on-disk corruptions of issue 15, as functions of an Orbax step directory (shared by tests and docs).

Each returns the file it damaged. Data files are the OCDBT chunks under state/ocdbt.process_0/d/.
"""
import pathlib


def data_files(step_dir):
  """Array data files, largest first (name breaks ties, so the choice is reproducible)."""
  files = [p for p in (pathlib.Path(step_dir) / "state" / "ocdbt.process_0" / "d").iterdir() if p.is_file()]
  return sorted(files, key=lambda p: (-p.stat().st_size, p.name))


def _truncate(path, fraction=0.5):
  data = path.read_bytes()
  path.write_bytes(data[:int(len(data) * fraction)])
  return path


def _zero(path):
  path.write_bytes(bytes(path.stat().st_size))
  return path


def _overwrite(path, n=8):
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + n] = bytes((b ^ 0xA5) or 0x5A for b in data[middle:middle + n])  # every byte changes
  path.write_bytes(bytes(data))
  return path


def _flip_bit(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x10
  path.write_bytes(bytes(data))
  return path


def _top_d_file(step_dir):
  return sorted((pathlib.Path(step_dir) / "state" / "d").iterdir())[0]


KINDS = {
    "largest data file half-truncated": lambda s: _truncate(data_files(s)[0]),
    "largest data file zeroed": lambda s: _zero(data_files(s)[0]),
    "a d/ file half-truncated": lambda s: _truncate(_top_d_file(s)),
    "top manifest.ocdbt cut to 0 bytes": lambda s: _truncate(pathlib.Path(s) / "state" / "manifest.ocdbt", 0.0),
    "_sharding half-truncated": lambda s: _truncate(pathlib.Path(s) / "state" / "_sharding"),
    "array_metadatas half-truncated": lambda s: _truncate(pathlib.Path(s) / "state" / "array_metadatas" / "process_0"),
    "_METADATA half-truncated": lambda s: _truncate(pathlib.Path(s) / "state" / "_METADATA"),
    "ocdbt.process_0/manifest.ocdbt truncated": lambda s: _truncate(
        pathlib.Path(s) / "state" / "ocdbt.process_0" / "manifest.ocdbt"),
    "smallest data file truncated": lambda s: _truncate(data_files(s)[-1]),
    "8 bytes overwritten in data file 1": lambda s: _overwrite(data_files(s)[0]),
    "8 bytes overwritten in data file 2": lambda s: _overwrite(data_files(s)[1]),
    "one bit flipped in data file 1": lambda s: _flip_bit(data_files(s)[0]),
    "one bit flipped in data file 2": lambda s: _flip_bit(data_files(s)[1]),
}
