"""The `scripts/train` commands in the configs' docstrings, as argument lists a test can run in a tmp dir."""
import ast
import itertools
import re
import shlex

from tessera_testing import ROOT

CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if p.stem not in ("__init__", "defaults"))
NO_TINY = {"zett_continue": "its argument is a transferred run's directory (a tiny run gives a tiny config)"}


def docstring_commands():
  """[(config stem, line number in the docstring, argv after `scripts/train`)] in docstring order."""
  out = []
  for path in CONFIGS:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    for number, line in enumerate(doc.splitlines(), 1):
      line = line.strip()
      if line == "scripts/train" or line.startswith("scripts/train "):
        words = [w for w in shlex.split(line.split(" #")[0]) if w != "..."]
        out.append((path.stem, number, words[1:]))
  return out


def needs_other_commands(argv):
  """A config read from a run that a non-train command writes (configs/zett_continue.py:<transferred run>)."""
  return any(":runs/" in a for a in argv)


def localize(argv, tmp, meds=None, counter=itertools.count()):
  """Workdirs (runs/NAME, also inside overrides) under tmp, a default --config and a fresh --workdir where the
  command has none, data/meds -> `meds`; train.steps=2."""
  argv = [re.sub(r"(^|=)runs/", lambda m: m.group(1) + f"{tmp}/", a) for a in argv]
  if meds is not None:
    argv = [a.replace("=data/meds", f"={meds}") for a in argv]
  if "--config" not in argv:
    argv = ["--config", "configs/quickstart.py"] + argv
  if "--workdir" not in argv:
    argv += ["--workdir", f"{tmp}/default_{next(counter)}"]
  return argv + ["--config.train.steps=2"]
