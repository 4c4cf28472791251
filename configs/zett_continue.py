"""Continued training of a transferred run (ZeTT's n-shot step, zett.md §6): the run's own config.json as a config.

  scripts/transfer_tokenizer --workdir runs/zett --tokenizer NEW.json --out runs/newtok
  scripts/train --config configs/zett_continue.py:runs/newtok --workdir runs/newtok_500 \
      --config.init.workdir=runs/newtok --config.init.strict=True     # (= --init-from, and resumable as is)

The argument is the transferred run's directory; its config.json (a plain decoder over data prepared with the new
tokenizer) is loaded as is, so every override works on it. Defaults for continuing: 500 steps, warmup 5%, lr 5e-4.
"""
import pathlib

from tessera.trainer import config_loader


def get_config(arg=""):
  if not arg:
    raise ValueError("configs/zett_continue.py: give the transferred run, e.g. configs/zett_continue.py:runs/newtok")
  config = config_loader.from_json(pathlib.Path(arg) / "config.json")
  with config.unlocked():
    config.train.steps = 500
    config.optim.warmup_steps = config.train.get_ref("steps") // 20
    config.optim.lr = 5e-4
    config.eval.every_steps = 100
    config.checkpoint.every_steps = 100
    config.sample.max_new_tokens = 0
  return config
