"""The two-command quickstart: a small STEM decoder (configs/stem.py:small, its STEM layers 1 and 3 looking up
per-token table rows instead of an up-projection) trained on the embedded corpus in a few minutes on 2 CPU cores.

  scripts/train                      # same as: scripts/train --config configs/quickstart.py --workdir runs/quickstart
  scripts/edit_knowledge --workdir runs/quickstart --prompt "Return the value of the " --swap " the= a"
"""
from tessera.configs import stem


def get_config(arg=None):
  """No argument: the quickstart; `tiny`: the same recipe at CI size (configs/stem.py:tiny, seconds)."""
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/quickstart.py: unknown variant {arg!r}; choose tiny or none")
  if arg == "tiny":
    c = stem.build("tiny")
    c.lock()
    return c
  c = stem.build("small")
  c.train.update(dict(batch_size=16, seq_len=128, steps=600, log_every_steps=20))  # 30 step lines
  c.eval.update(dict(every_steps=200, batches=8))
  c.checkpoint.every_steps = 200
  c.lock()
  return c
