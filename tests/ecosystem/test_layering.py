"""Dependencies point one way (data and models never import the trainer) and every command-line argument of the
user commands says what it is for (`--help`)."""
import ast
import subprocess

import pytest

from tessera_testing import ROOT



def _trees(*patterns):
  for pattern in patterns:
    for path in sorted(ROOT.glob(pattern)):
      yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text())


def test_data_and_models_never_import_the_trainer():
  offenders = []
  for name, tree in _trees("data/**/*.py", "models/**/*.py"):
    for node in ast.walk(tree):
      modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
          [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      offenders += [f"{name}:{node.lineno}" for m in modules if m.startswith("tessera.trainer")]
  assert offenders == []


def test_every_argument_has_help():
  missing = []
  for name, tree in _trees("scripts/*.py", "launch/*.py", "trainer/*.py", "data/*.py"):
    for node in ast.walk(tree):
      if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
        if not any(k.arg == "help" for k in node.keywords):
          missing.append(f"{name}:{node.lineno}")
  assert missing == []


@pytest.mark.parametrize("command", ["launch/tpu_pod.sh", "launch/slurm.sbatch", "scripts/bench_data"])
def test_help_runs(command):
  result = subprocess.run([command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and "--" in result.stdout, result.stderr
