"""TRIM-KV's gate objective (shared/specs/trimkv.md §5): distillation from the frozen full-attention model plus a
capacity loss on the soft occupancy.

  L = KL(p_teacher || p_student) + ntp_weight * CE(student) + retention_weight * L_cap

The teacher is the *same* model called with retention=False (beta == 1, plain attention) under stop_gradient,
inside the same jitted step: no second copy of the weights, no stored teacher logits (§5, issue 12).
Forward KL, temperature 1, mean over the non-padding positions (the batch's loss_mask), ntp_weight 1: project
defaults, the paper being silent (§5). The published loss name "fwkl_ntp" is KL + next-token CE.

  L_cap = mean over (layer, KV head, row, valid position t) of max(0, S_t - M) / norm_t
norm_t by `loss.trimkv.capacity_norm`: "t" divides by t + 1 (each term in [0, 1); project default), "M" by M,
"none" by 1. t is the token's within-document position, so packed documents count from their own start.
Keys: loss.trimkv.{memory_size, retention_weight, ntp_weight, capacity_norm}.
"""
import jax
import jax.numpy as jnp

from tessera.losses import next_token
from tessera.losses import registry

CAPACITY_NORMS = ("t", "M", "none")


def forward_kl(teacher_logits_BxTxV, student_logits_BxTxV, mask_BxT):
  """Masked mean over positions of KL(p_t || p_s) = sum_v p_t (log p_t - log p_s), fp32."""
  log_p_t = jax.nn.log_softmax(teacher_logits_BxTxV.astype(jnp.float32), axis=-1)
  log_p_s = jax.nn.log_softmax(student_logits_BxTxV.astype(jnp.float32), axis=-1)
  kl_BxT = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return jnp.sum(kl_BxT * mask_BxT) / jnp.maximum(jnp.sum(mask_BxT), 1.0)


def capacity_loss(occupancy_LxBxKxT, positions_BxT, mask_BxT, memory_size, norm="t"):
  """§5 project default: mean of max(0, S_t - M) / norm_t over (layer, KV head, row, valid t)."""
  excess_LxBxKxT = jax.nn.relu(occupancy_LxBxKxT - memory_size)
  if norm == "t":
    excess_LxBxKxT = excess_LxBxKxT / (positions_BxT[None, :, None, :].astype(jnp.float32) + 1.0)
  elif norm == "M":
    excess_LxBxKxT = excess_LxBxKxT / memory_size
  weight_LxBxKxT = jnp.broadcast_to(mask_BxT[None, :, None, :], occupancy_LxBxKxT.shape).astype(jnp.float32)
  return jnp.sum(excess_LxBxKxT * weight_LxBxKxT) / jnp.maximum(jnp.sum(weight_LxBxKxT), 1.0)


def occupancy_stats(occupancy_LxBxKxT, mask_BxT):
  """Diagnostics: mean S over valid positions, and mean S at each row's last valid position (the §9 check 8
  "mean per-head soft occupancy" compares the latter with M)."""
  mask = mask_BxT.astype(jnp.float32)
  mean = jnp.sum(occupancy_LxBxKxT * mask[None, :, None, :]) / jnp.maximum(
      jnp.sum(mask) * occupancy_LxBxKxT.shape[0] * occupancy_LxBxKxT.shape[2], 1.0)
  last_B = jnp.max(jnp.where(mask_BxT > 0, jnp.arange(mask_BxT.shape[1]), 0), axis=1)
  at_last_LxBxK = jnp.take_along_axis(occupancy_LxBxKxT, last_B[None, :, None, None], axis=-1)[..., 0]
  return mean, jnp.mean(at_last_LxBxK)


@registry.register("trimkv")
def build(config):
  t = config.loss.trimkv

  def loss_fn(model, batch, rng):
    del rng
    kwargs = dict(segment_ids_BxT=batch["segment_ids"], positions_BxT=batch["positions"])
    teacher_BxTxV = jax.lax.stop_gradient(model(batch["inputs"], retention=False, **kwargs))
    student_BxTxV, occupancy_LxBxKxT = model(batch["inputs"], return_occupancy=True, **kwargs)
    mask_BxT = batch["loss_mask"].astype(jnp.float32)
    kl = forward_kl(teacher_BxTxV, student_BxTxV, mask_BxT)
    ce, tokens = next_token.cross_entropy(student_BxTxV, batch["targets"], mask_BxT)
    cap = capacity_loss(occupancy_LxBxKxT, batch["positions"], mask_BxT, t.memory_size, t.capacity_norm)
    loss = kl + t.ntp_weight * ce + t.retention_weight * cap
    occ_mean, occ_last = occupancy_stats(occupancy_LxBxKxT, mask_BxT)
    return loss, {"loss": loss, "tokens": tokens, "kl": kl, "ce": ce, "capacity": cap,
                  "occupancy_mean": occ_mean, "occupancy_last": occ_last}

  return registry.Objective(loss_fn=loss_fn)


def _check(config):
  """loss.trimkv.* (run before anything is written, for every objective; only acts when loss.name == trimkv)."""
  if config.loss.name != "trimkv":
    return
  t = config.loss.get("trimkv")
  if t is None:
    raise ValueError("config key 'loss.trimkv': missing: the trimkv objective needs its keys (configs/trimkv.py)")
  if config.model.name != "trimkv":
    raise ValueError(f"config key 'model.name': the trimkv objective needs the retention-gated model 'trimkv', "
                     f"got {config.model.name!r}")
  if not (isinstance(t.memory_size, (int, float)) and t.memory_size >= 1):
    raise ValueError(f"config key 'loss.trimkv.memory_size': the budget M must be >= 1, got {t.memory_size!r}")
  for key in ("retention_weight", "ntp_weight"):
    if not (isinstance(t[key], (int, float)) and 0 <= t[key] < float("inf")):
      raise ValueError(f"config key 'loss.trimkv.{key}': must be a finite number >= 0, got {t[key]!r}")
  if t.capacity_norm not in CAPACITY_NORMS:
    raise ValueError(f"config key 'loss.trimkv.capacity_norm': {t.capacity_norm!r} is not one of "
                     f"{list(CAPACITY_NORMS)}")


# A rule that adds no hook: the documented way to have the objective's keys checked up front.
registry.rule(check=_check)(lambda config: None)
