"""Fixtures of the interop tests: one small prepared dataset (byte tokens) shared by every imported run."""
import sys
import pathlib

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import hf_helpers  # noqa: E402


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf_data")
  hf_helpers.write_tokenizer(root)
  return hf_helpers.write_prepared(root / "data", root / "tokenizer.json")
