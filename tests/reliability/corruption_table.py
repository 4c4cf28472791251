"""Prints the corruption table of docs/reliability.md: `.venv/bin/python tests/reliability/corruption_table.py`."""
import contextlib
import io
import pathlib
import shutil
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from corruption_kinds import KINDS  # noqa: E402
from test_checkpoint_integrity import CONFIG, abstract, assert_identical, make_state  # noqa: E402
from tessera.trainer import checkpoint as ckpt_lib  # noqa: E402


def main():
  root = pathlib.Path(tempfile.mkdtemp())
  ckpt = ckpt_lib.Checkpointer(root / "template", CONFIG)
  states = {3: make_state(1), 6: make_state(2)}
  for step, state in states.items():
    ckpt.save(step, state, {"next_batch": step})
  ckpt.close()
  print("| corruption of step 6 | outcome | stderr line (paths shortened) |\n|---|---|---|")
  for i, (kind, corrupt) in enumerate(KINDS.items()):
    workdir = root / str(i)
    shutil.copytree(root / "template", workdir)
    corrupt(workdir / "checkpoints" / "6")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
      step, state, _ = ckpt_lib.Checkpointer(workdir, CONFIG).restore_latest(abstract(states[6]))
    assert_identical(state, states[step])
    line = next((l for l in err.getvalue().splitlines() if "corrupt" in l), "")
    outcome = "harmless (bit-identical restore of step 6)" if step == 6 else "detected, fell back to step 3"
    print(f"| {kind} | {outcome} | `{line.replace(str(workdir) + '/', '')}` |")
  shutil.rmtree(root)


if __name__ == "__main__":
  main()
