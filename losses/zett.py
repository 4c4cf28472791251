"""ZeTT's objective (zett.md §4), loss "zett": the identity stage, then L_LM + 0.5 L_aux.

The batch says which stage it is (`stage` = 1 during the first `data.zett.identity_steps` batches, made by the
"zett" pipeline, tessera.data.zett_pipeline), so the LM forward is skipped in the identity stage (`lax.cond`).
Batch fields: the sampled vocabulary travels split over the batch rows (`surface` [B, n/B, L], `special`, `valid`)
and is reassembled here; `inputs`/`targets`/`loss_mask` are the text under the sampled tokenizer; `target_bytes`
the UTF-8 bytes of each target token (bits per byte, tokenizer-agnostic).

The after-update rule stores the rescalers after the first update (tessera.models.zett) and never touches them
again.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tessera.losses import registry
from tessera.models import zett_optim

DEFAULTS = dict(aux_weight=0.5, aux_kind="mse")
AUX_EPS = 1e-8


def add_keys(c):
  c.loss.zett = ml_collections.ConfigDict(dict(DEFAULTS))
  return c


def vocab_fields(batch):
  """The sampled vocabulary reassembled from its per-row chunks: surface [n, L], special [n], valid [n]."""
  surface = batch["surface"].reshape(-1, batch["surface"].shape[-1])
  return surface, batch["special"].reshape(-1), batch["valid"].reshape(-1) > 0


def _sq_dist(a_NxD, b_NxD, kind):
  d2_N = jnp.sum(jnp.square(a_NxD - b_NxD), -1)
  if kind == "rmse":
    return jnp.sqrt(d2_N + AUX_EPS)
  if kind == "huber":
    return jnp.sum(optax.huber_loss(a_NxD, b_NxD), -1)
  return d2_N


def aux_loss(model, surface_NxL, valid_N, special_N, e_in, e_out, pad_id, kind="mse"):
  """§4 auxiliary loss: tokens whose decomposition is one old piece are pulled to that piece's embeddings,
  normalised by the mean first-piece embedding norm over all valid rows; mean over {in, out}."""
  first_N = jnp.minimum(surface_NxL[:, 0], model.n_src - 1)
  later_pad = jnp.all((surface_NxL[:, 1:] == pad_id), -1)
  single_N = (valid_N & later_pad & (surface_NxL[:, 0] < model.n_src) & (special_N < 0)).astype(jnp.float32)
  validf_N = valid_N.astype(jnp.float32)
  losses = []
  for pred, table in ((e_in, model.e_in()), (e_out, model.e_out())):
    target = jnp.take(table, first_N, 0)
    err = jnp.sum(single_N * _sq_dist(pred, target, kind)) / (jnp.sum(single_N) + AUX_EPS)
    norm = jnp.sum(validf_N * jnp.linalg.norm(target, axis=-1)) / jnp.maximum(jnp.sum(validf_N), 1.0)
    losses.append(err / norm)
  return 0.5 * (losses[0] + losses[1]), jnp.sum(single_N)


def identity_loss(model, surface_NxL, valid_N, pad_id):
  """§4 identity stage: surface = one old id; mean_t ||ê(t) - E[t]||² averaged over the in and out heads."""
  e_in, e_out = model.predict(surface_NxL, pad_id)
  ids_N = jnp.minimum(surface_NxL[:, 0], model.n_src - 1)
  w_N = valid_N.astype(jnp.float32)
  total = 0.0
  for pred, table in ((e_in, model.e_in()), (e_out, model.e_out())):
    total = total + jnp.sum(w_N * jnp.sum(jnp.square(pred - jnp.take(table, ids_N, 0)), -1)) / jnp.sum(w_N)
  return 0.5 * total


def lm_loss(model, batch, surface_NxL, valid_N, special_N, pad_id, aux_weight, aux_kind):
  """L_LM (masked next-token CE of the frozen LM under predicted embeddings) + aux_weight * L_aux."""
  e_in, e_out = model.predict(surface_NxL, pad_id, special_N)
  logits_BxTxN = model.logits(batch["inputs"], e_in, e_out, valid_N)
  mask_BxT = batch["loss_mask"].astype(jnp.float32)
  ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxN, batch["targets"])
  tokens = jnp.sum(mask_BxT)
  nll = jnp.sum(ce_BxT * mask_BxT)
  l_lm = nll / jnp.maximum(tokens, 1.0)
  l_aux, n_single = aux_loss(model, surface_NxL, valid_N, special_N, e_in, e_out, pad_id, aux_kind)
  nbytes = jnp.sum(batch["target_bytes"] * mask_BxT)
  metrics = {"loss_lm": l_lm, "loss_aux": l_aux, "tokens": tokens, "single_piece_tokens": n_single,
             "bits_per_byte": nll / math.log(2) / jnp.maximum(nbytes, 1.0),
             "tokens_per_byte": tokens / jnp.maximum(nbytes, 1.0)}
  return l_lm + aux_weight * l_aux, metrics


@registry.register("zett")
def build(config):
  z = config.loss.zett
  two_stage = config.optim.get("zett") is not None and bool(config.optim.zett.two_stage)

  def loss_fn(model, batch, rng):
    del rng
    pad_id = batch["pad_id"][0]  # the old tokenizer's pad (= eos) id, which pads the surface forms
    surface_NxL, special_N, valid_N = vocab_fields(batch)
    stage = batch["stage"][0]

    def identity():
      loss = identity_loss(model, surface_NxL[:, :1], valid_N, pad_id)  # one piece per row: L = 1 is the same
      zero = jnp.zeros((), jnp.float32)
      return loss, {"loss_lm": zero, "loss_aux": zero, "tokens": zero, "single_piece_tokens": zero,
                    "bits_per_byte": zero, "tokens_per_byte": zero, "loss_identity": loss, "stage": stage * 1.0}

    def main():
      loss, metrics = lm_loss(model, batch, surface_NxL, valid_N, special_N, pad_id, z.aux_weight, z.aux_kind)
      return loss, {**metrics, "loss_identity": jnp.zeros((), jnp.float32), "stage": stage * 1.0}

    loss, metrics = jax.lax.cond(stage > 0, identity, main)
    metrics["tokens"] = jnp.maximum(metrics["tokens"], 1.0)
    if two_stage and "step" in batch:
      metrics["zett_lr"] = zett_optim.lr_at(config.optim, jnp.maximum(batch["step"][0], 0))
    return loss, metrics

  def after_update(model, step):
    del step
    model.fit_rescalers()
    return {}

  return registry.Objective(loss_fn=loss_fn, rules=(registry.Rule(after_update=after_update),))


def _check(config):
  if config.loss.name != "zett":
    return
  z = config.loss.get("zett")
  if z is None:
    raise ValueError("config key 'loss.zett': missing (configs/zett.py adds it)")
  if not isinstance(z.aux_weight, (int, float)) or z.aux_weight < 0:
    raise ValueError(f"config key 'loss.zett.aux_weight': must be >= 0, got {z.aux_weight!r}")
  if z.aux_kind not in ("mse", "rmse", "huber"):
    raise ValueError(f"config key 'loss.zett.aux_kind': {z.aux_kind!r} is not one of ['mse', 'rmse', 'huber']")
  if config.model.name != "zett":
    raise ValueError(f"config key 'loss.name': 'zett' needs model.name 'zett', got {config.model.name!r}")


registry.rule(check=_check)(lambda config: None)
