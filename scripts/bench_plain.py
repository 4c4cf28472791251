"""The comparison point for `scripts/bench --shapes`: a plain Flax NNX + optax train step, as a tutorial writes it.

Same decoder module and shapes as tessera's run, fp32, `nnx.Optimizer` + `nnx.jit` + `nnx.value_and_grad`, optax
AdamW and optax's integer-label cross-entropy; random tokens (throughput does not depend on the data).
"""
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tessera.models import decoder


def step_seconds(model_cfg, batch, seq_len, steps):
  """Median seconds per step after one warm-up (compile) step."""
  with nnx.use_eager_sharding(False):
    model = decoder.build(model_cfg, nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, tokens_BxT, targets_BxT):
    def loss_fn(model):
      logits_BxTxV = model(tokens_BxT)
      return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, model_cfg.vocab_size, (batch, seq_len + 1)), jnp.int32)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  train_step(model, optimizer, inputs, targets).block_until_ready()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    train_step(model, optimizer, inputs, targets).block_until_ready()
    times.append(time.perf_counter() - start)
  return statistics.median(times)
