"""Stand-in cluster commands (gcloud, sbatch, srun, scontrol) for the launcher tests: each reads all of its stdin
(as ssh and some submit wrappers do, which is how a `while read` loop loses sweep points) and records its call as
one JSON line in $STANDIN_LOG. gcloud runs an ssh --command that starts the trainer with bash in $STANDIN_HOME
(a fake worker); srun waits for SIGTERM like a training job and exits 1 ("checkpoint saved")."""
import json
import os
import pathlib
import stat
import sys

STANDIN = f'''#!{sys.executable}
import json, os, signal, subprocess, sys, time
name = os.path.basename(sys.argv[0])
stdin = sys.stdin.read()
def record(**extra):
  with open(os.environ["STANDIN_LOG"], "a") as f:
    f.write(json.dumps({{"argv": [name] + sys.argv[1:], "stdin": stdin, **extra}}) + "\\n")
record()
if name == "gcloud" and "--command" in sys.argv:
  command = sys.argv[sys.argv.index("--command") + 1]
  if "tessera.trainer" in command or "tail " in command:
    env = {{**os.environ, "HOME": os.environ["STANDIN_HOME"]}}
    sys.exit(subprocess.run(["bash", "-c", command], env=env, stdin=subprocess.DEVNULL).returncode)
if name == "srun":
  signal.signal(signal.SIGTERM, lambda *_: (record(signal="TERM"), sys.exit(1)))
  with open(os.environ["STANDIN_LOG"] + ".srun_started", "w"):
    pass
  time.sleep(float(os.environ.get("STANDIN_SRUN_SECONDS", "60")))
'''

# The worker's trainer: records its arguments, reads stdin, prints a line (to the log in --background).
PYTHON = f'''#!{sys.executable}
import json, os, sys
stdin = sys.stdin.read()
with open(os.environ["STANDIN_LOG"], "a") as f:
  f.write(json.dumps({{"argv": ["worker-python"] + sys.argv[1:], "stdin": stdin,
                      "distributed": os.environ.get("TESSERA_DISTRIBUTED")}}) + "\\n")
print("trained", sys.argv[-1], flush=True)
'''


def _executable(path, text):
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def install(tmp_path):
  """(env for subprocess.run, log path): stand-ins first on PATH, a fake worker home with ~/tessera/.venv."""
  bin_dir, home = tmp_path / "bin", tmp_path / "home"
  bin_dir.mkdir()
  (home / "tessera" / ".venv" / "bin").mkdir(parents=True)
  (home / "tessera" / "logs").mkdir()
  for name in ("gcloud", "sbatch", "srun", "scontrol"):
    _executable(bin_dir / name, STANDIN)
  _executable(home / "tessera" / ".venv" / "bin" / "python", PYTHON)
  log = tmp_path / "calls.jsonl"
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STANDIN_LOG": str(log),
         "STANDIN_HOME": str(home)}
  return env, log


def calls(log):
  log = pathlib.Path(log)
  return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
