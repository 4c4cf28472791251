"""The `scripts/...` commands in the configs' docstrings, as argument lists a test can run in a tmp dir."""
import ast
import itertools
import re
import shlex

from tessera_testing import ROOT
from tessera.trainer import cli

CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if p.stem not in ("__init__", "defaults"))
NO_TINY = {"zett_continue": "its argument is a transferred run's directory (a tiny run gives a tiny config)"}
# a config whose docstring continues another's chain: its commands run after that config's, in the same runs dir
CONTINUES = {"zett_continue": "zett"}
PLACEHOLDERS = ("MEDS_DIR", "NEW.json")  # a MEDS source directory, a target tokenizer: made by the test


def docstring_commands():
  """[(config stem, line number in the docstring, script name, argv after it)] in docstring order."""
  out = []
  for path in CONFIGS:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    lines = doc.splitlines()
    for number, line in enumerate(lines, 1):
      line = line.strip()
      if not re.match(r"scripts/\w+( |$)", line):
        continue
      while line.endswith("\\") and number < len(lines):  # a command continued on the next line
        line = line[:-1] + " " + lines[number].strip()
        number += 1
      words = [w for w in shlex.split(line.split(" #")[0]) if w != "..."]
      out.append((path.stem, number, words[0].removeprefix("scripts/"), words[1:]))
  return out


def train_commands():
  return [(stem, line, argv) for stem, line, script, argv in docstring_commands() if script == "train"]


def needs_other_commands(argv):
  """A config read from a run that a non-train command writes (configs/zett_continue.py:<transferred run>)."""
  return any(":runs/" in a for a in argv)


def localize(script, argv, tmp, placeholders=None, counter=itertools.count()):
  """Run directories (runs/NAME, also inside overrides and config arguments) and data/NAME under tmp, the
  placeholders replaced; for scripts/train a default --config, the default workdir under tmp, train.steps=2."""
  argv = [re.sub(r"(^|=|:)(runs|data)/", lambda m: f"{m.group(1)}{tmp}/{m.group(2)}_", a) for a in argv]
  argv = [str((placeholders or {}).get(a, a)) for a in argv]
  if script != "train":
    return argv
  if "--config" not in argv:
    argv = ["--config", cli.DEFAULT_CONFIG] + argv
  if "--workdir" not in argv:
    spec = argv[argv.index("--config") + 1]
    documented = ":runs/" not in spec and "--sweep" not in argv  # later commands may name its default workdir
    name = cli.default_workdir(spec).removeprefix("runs/") if documented else f"default_{next(counter)}"
    argv += ["--workdir", f"{tmp}/runs_{name}"]
  return argv + ["--config.train.steps=2"]
