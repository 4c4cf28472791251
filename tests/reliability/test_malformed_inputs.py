"""Every malformed input of the table (malformed_inputs.CASES) exits 2 with one stderr line naming the key, file,
row or shape, and leaves every file it found exactly as it was (issue 15)."""
import pytest

import malformed_inputs as table


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
  return table.Fixtures(tmp_path_factory.mktemp("malformed_fixtures"))


def _param(case):
  return pytest.param(case, id=case.name, marks=[pytest.mark.slow] if case.slow else [])


def test_the_table_has_at_least_60_cases():
  assert len(table.CASES) >= 60
  assert len({c.name for c in table.CASES}) == len(table.CASES)


@pytest.mark.parametrize("case", [_param(c) for c in table.CASES])
def test_malformed_input_is_one_line_exit_2_and_changes_nothing(case, tmp_path, fixtures):
  try:
    code, stderr, before, after = table.run_case(case, tmp_path, fixtures)
  except table.Unavailable as e:
    pytest.skip(str(e))
  lines = table.stderr_lines(stderr)
  assert code == 2, stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
  assert case.expect in lines[0], lines[0]
  assert before == after, "files changed"
