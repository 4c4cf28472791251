"""A test-only method that lives outside the package: a frozen base, a trained head, an EMA of the head kept as
model state and updated after every optimizer step. It registers itself when imported (config key `imports`);
nothing in tessera/trainer knows it."""
import jax
import jax.numpy as jnp
from flax import nnx

from tessera.losses import next_token
from tessera.losses import registry as loss_registry
from tessera.models import registry as model_registry
from tessera.models.layers import ModelState

EMA_DECAY = 0.9


class ToyLM(nnx.Module):
  """logits = tanh(embed[tokens] @ mix) @ head; `base` (embed, mix) is what a first run trains and a second freezes."""

  def __init__(self, cfg, rngs):
    V, D = cfg.vocab_size, cfg.d_model
    normal = nnx.initializers.normal(0.02)
    self.base = nnx.Dict(
        embed=nnx.Param(nnx.with_partitioning(normal, ("vocab", "embed"))(rngs.params(), (V, D))),
        mix=nnx.Param(nnx.with_partitioning(normal, ("embed", "mlp"))(rngs.params(), (D, D))))
    self.head = nnx.Param(nnx.with_partitioning(normal, ("embed", "vocab"))(rngs.params(), (D, V)))
    self.head_ema = ModelState(self.head[...], out_sharding=("embed", "vocab"))

  def __call__(self, tokens_BxT, **_):
    h_BxTxD = jnp.tanh(jnp.take(self.base["embed"][...], tokens_BxT, axis=0) @ self.base["mix"][...])
    return h_BxTxD @ self.head[...]


@model_registry.register("toy_ema")
def build(cfg, rngs):
  return ToyLM(cfg, rngs)


@model_registry.checks("toy_ema")
def check(config):
  if config.model.d_model < 2:
    raise ValueError(f"config key 'model.d_model': the toy needs >= 2, got {config.model.d_model}")


@loss_registry.register("toy_ema")
def objective(config):
  del config
  lm = next_token.build(None)

  def after_update(model, step):
    del step
    model.head_ema[...] = EMA_DECAY * model.head_ema[...] + (1 - EMA_DECAY) * model.head[...]
    return {"ema_gap": jnp.sqrt(jnp.sum(jnp.square(model.head[...] - model.head_ema[...])))}

  return loss_registry.Objective(loss_fn=lm, rules=(loss_registry.Rule(after_update=after_update),))
