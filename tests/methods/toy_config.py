"""The test-only method's config: `toy_config.py:pretrain` trains everything; the default variant trains only the
head over the frozen base (load the base with --config.init.workdir=<pretrain run>)."""
import pathlib

from tessera.configs import defaults


def get_config(arg="head"):
  c = defaults.base_config()
  c.imports = [str(pathlib.Path(__file__).with_name("toy_method.py"))]
  c.model.update(dict(name="toy_ema", d_model=32))
  c.loss.name = "toy_ema"
  c.train.update(dict(steps=8, batch_size=4, seq_len=32))
  c.train.trainable = ".*" if arg == "pretrain" else "^head"
  c.checkpoint.every_steps = 2
  c.eval.update(dict(every_steps=4, batches=1))
  c.sample.max_new_tokens = 0  # the toy does not generate
  c.lock()
  return c
