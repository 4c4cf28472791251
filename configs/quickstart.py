"""The two-command quickstart: a small decoder trained on the embedded corpus in a few minutes on 2 CPU cores.

  scripts/train                      # same as: scripts/train --config configs/quickstart.py --workdir runs/quickstart
"""
from tessera.configs import defaults


def get_config(arg=None):
  del arg
  c = defaults.base_config()
  c.model.update(dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512))
  c.train.update(dict(batch_size=16, seq_len=128, steps=600))
  c.optim.lr = 3e-3
  c.eval.update(dict(every_steps=200, batches=8))
  c.checkpoint.every_steps = 200
  c.sample.prompt = "The "
  c.lock()
  return c
