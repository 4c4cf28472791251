"""A stand-in training loop for the SIGKILL test: real Checkpointer + Writer, the call order the loop uses.

Usage: metrics_worker.py WORKDIR STEPS. Prints `saved N` after each save starts."""
import sys
import time

import jax.numpy as jnp
from ml_collections import ConfigDict

from tessera.trainer import checkpoint as ckpt_lib
from tessera.trainer import metrics as metrics_lib

CONFIG = ConfigDict(dict(every_steps=3, every_seconds=0.0, max_to_keep=2, keep_period=0, async_save=True))


def state_at(step):
  return {"step": jnp.int32(step), "params": {"w": jnp.full((256, 256), step, jnp.float32)}}


def loss_at(step):
  return 1.0 / step


def main(workdir, steps):
  ckpt = ckpt_lib.Checkpointer(workdir, CONFIG)
  abstract = {"step": jnp.zeros((), jnp.int32), "params": {"w": jnp.zeros((256, 256))}}
  restored = ckpt.restore_latest(abstract)                         # at restore
  start = restored[0] if restored else 0
  writer = metrics_lib.Writer(workdir, resume_step=start)          # at resume: truncate + rewrite TB
  for step in range(start + 1, steps + 1):
    time.sleep(0.02)
    writer.scalars(step, {"loss": loss_at(step)}, "train")
    if step % 3 == 0 or step == steps:
      writer.sync()                                                # before save
      ckpt.save(step, state_at(step), {"next_batch": step})
      print(f"saved {step}", flush=True)
  ckpt.close()
  writer.close()
  print("done", flush=True)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]))
