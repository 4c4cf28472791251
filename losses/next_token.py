"""Next-token cross-entropy: the LM objective, masked to targets inside the same packed segment.

`loss.fused_ce_chunk` > 0 fuses the output head into the loss, chunked over tokens (losses/fused_cross_entropy.py).
"""
import jax
import jax.numpy as jnp

from tessera.losses import fused_cross_entropy
from tessera.losses import registry


def cross_entropy(logits_BxTxV, targets_BxT, mask_BxT):
  """Masked mean token NLL in fp32, and the token count."""
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  log_z_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  tokens = jnp.sum(mask_BxT)
  loss = jnp.sum((log_z_BxT - target_logit_BxT) * mask_BxT) / jnp.maximum(tokens, 1.0)
  return loss, tokens


def fused_ce_chunk(config):
  """`loss.fused_ce_chunk`: tokens per chunk of the fused head + CE (0: logits from the model, then the CE above).
  `config` None (a method reusing the plain LM loss, e.g. `build(None)`) means 0."""
  return 0 if config is None else config.loss.get("fused_ce_chunk", 0)


def check(config):
  chunk = fused_ce_chunk(config)
  if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
    raise ValueError(f"config key 'loss.fused_ce_chunk': must be an int >= 0 (0 = off), got {chunk!r}")
  if chunk and config.loss.name != "next_token":
    raise ValueError(f"config key 'loss.fused_ce_chunk': only loss.name='next_token' fuses its head (loss.name is "
                     f"{config.loss.name!r}); set it to 0")


registry.rule(check)(lambda config: None)  # validates the key before anything is written; attaches no rule


@registry.register("next_token")
def build(config):
  chunk = fused_ce_chunk(config)

  def loss_fn(model, batch, rng):
    del rng
    inputs = dict(segment_ids_BxT=batch["segment_ids"], positions_BxT=batch["positions"])
    if chunk:
      x_BxTxD, w_VxD = model.hidden_and_unembedding(batch["inputs"], **inputs)
      loss, tokens = fused_cross_entropy.cross_entropy(x_BxTxD, w_VxD, batch["targets"], batch["loss_mask"], chunk)
    else:
      logits_BxTxV = model(batch["inputs"], **inputs)
      loss, tokens = cross_entropy(logits_BxTxV, batch["targets"], batch["loss_mask"])
    return loss, {"loss": loss, "tokens": tokens}

  return loss_fn
