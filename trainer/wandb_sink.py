"""An optional second metrics sink, Weights & Biases (`metrics.wandb=True`); wandb is an extra, not a dependency.

Why a stable run id (from the workdir's path): a resumed run continues the same wandb run instead of starting a
new one. Offline use (WANDB_MODE=offline) writes under <workdir>/wandb and needs no account or network.
"""
import hashlib
import os

from tessera.trainer.config_loader import ConfigError


def run_id(workdir):
  return "tessera-" + hashlib.sha1(str(workdir).encode()).hexdigest()[:12]


class WandbSink:
  """wandb.init once (config = the flattened config), log(step, {tag: value}) per scalars() call, finish() at close."""

  def __init__(self, workdir, config):
    try:
      import wandb
    except ImportError:
      raise ConfigError("config key 'metrics.wandb': True needs the wandb package (pip install wandb); "
                        "WANDB_MODE=offline logs without an account") from None
    self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tessera"), name=workdir.name,
                          id=run_id(workdir), dir=str(workdir), config=config, resume="allow")

  def log(self, step, tags):
    self.run.log(tags, step=int(step))

  def close(self):
    self.run.finish()
