"""No pickle or eval of untrusted input anywhere in the package (issue 15).

Python files are checked on their syntax tree (a docstring that says "unpickle" is not a use; `model.eval(` is not
`eval(`); shell scripts line by line. Allowed: ast.literal_eval, trainer/config_loader.py importing the --config
Python file and trainer/zoo.py importing the plugin files that config lists (both documented as code the user
runs); any other `.exec_module(` is reported so that a new code-loading path is a decision, not an accident."""
import ast
import pathlib
import re

from tessera_testing import ROOT

FOLDERS = ("trainer", "models", "losses", "data", "configs", "scripts", "launch")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
# Importing Python the user names as code: the --config file, and the plugin files its `imports` key lists.
ALLOWED = {("trainer/config_loader.py", "exec_module"), ("trainer/zoo.py", "exec_module")}


def python_findings(path, rel):
  tree = ast.parse(path.read_text(), filename=rel)
  found = []
  for node in ast.walk(tree):
    where = f"{rel}:{getattr(node, 'lineno', 0)}"
    if isinstance(node, ast.Import):
      found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
    elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
      found.append(f"{where} from {node.module} import")
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in UNSAFE_MODULES:
      found.append(f"{where} {node.value.id}.{node.attr}")
    elif isinstance(node, ast.Call):
      fn = node.func
      if isinstance(fn, ast.Name) and fn.id in ("eval", "exec", "__import__"):
        found.append(f"{where} {fn.id}(")
      if isinstance(fn, ast.Attribute) and fn.attr in ("load", "load_all", "unsafe_load", "full_load") and (
          isinstance(fn.value, ast.Name) and fn.value.id == "yaml"):
        found.append(f"{where} yaml.{fn.attr}(")
      if isinstance(fn, ast.Attribute) and (rel, fn.attr) not in ALLOWED and fn.attr == "exec_module":
        found.append(f"{where} .exec_module(")
      for kw in node.keywords:
        if kw.arg in ("allow_pickle", "shell") and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
          found.append(f"{where} {kw.arg}={ast.unparse(kw.value)}")
  return found


def shell_findings(path, rel):
  found = []
  for n, line in enumerate(path.read_text().splitlines(), 1):
    code = line.split("#", 1)[0] if not line.lstrip().startswith("#!") else ""
    if re.search(r"(^|[;&|(`]\s*|\bthen\s+|\bdo\s+)eval\s", code) or "pickle" in code:
      found.append(f"{rel}:{n} {line.strip()}")
  return found


def test_no_pickle_or_eval():
  findings, checked = [], 0
  for folder in FOLDERS:
    for path in sorted((ROOT / folder).rglob("*")):
      if not path.is_file() or "__pycache__" in path.parts:
        continue
      rel = str(path.relative_to(ROOT))
      if path.suffix == ".py":
        findings += python_findings(path, rel)
      elif path.suffix in ("", ".sh", ".sbatch") and path.read_bytes()[:2] == b"#!":
        findings += shell_findings(path, rel)
      else:
        continue
      checked += 1
  assert checked > 50
  assert not findings, "\n".join(findings)


def test_the_checker_sees_what_it_must(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("import pickle\nfrom dill import loads\nimport yaml, numpy as np, subprocess\n"
                 "eval('1')\nexec('x = 1')\nyaml.load(s)\nnp.load(f, allow_pickle=True)\n"
                 "subprocess.run('ls', shell=True)\npickle.loads(b)\n")
  ok = tmp_path / "ok.py"
  ok.write_text('"""workers can unpickle it"""\nimport ast, yaml\nast.literal_eval("1")\nmodel.eval()\n'
                "yaml.safe_load(s)\nnp.load(f, allow_pickle=False)\n")
  assert len(python_findings(bad, "bad.py")) == 8
  assert python_findings(ok, "ok.py") == []
  sh = tmp_path / "run.sh"
  sh.write_text('#!/bin/bash\n# eval is not here\nexec "$PY" x.py\neval "$CMD"\n')
  assert shell_findings(sh, "run.sh") == ['run.sh:4 eval "$CMD"']
