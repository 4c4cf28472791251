"""Next-token cross-entropy: the LM objective, masked to targets inside the same packed segment."""
import jax
import jax.numpy as jnp

from tessera.losses import registry


def cross_entropy(logits_BxTxV, targets_BxT, mask_BxT):
  """Masked mean token NLL in fp32, and the token count."""
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  log_z_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  tokens = jnp.sum(mask_BxT)
  loss = jnp.sum((log_z_BxT - target_logit_BxT) * mask_BxT) / jnp.maximum(tokens, 1.0)
  return loss, tokens


@registry.register("next_token")
def build(config):
  del config

  def loss_fn(model, batch, rng):
    del rng
    logits_BxTxV = model(batch["inputs"], segment_ids_BxT=batch["segment_ids"], positions_BxT=batch["positions"])
    loss, tokens = cross_entropy(logits_BxTxV, batch["targets"], batch["loss_mask"])
    return loss, {"loss": loss, "tokens": tokens}

  return loss_fn
