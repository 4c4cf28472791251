"""SFT + JEPA for EHR world models (jepa_ehr.md §5), registered as loss "ehr_jepa"; pairs with model "ehr_world"
and data "ehr_cuts" (batches carry `cut_idx` and `last_idx` per row).

  L = L_SFT + λ(step) · L_JEPA (+ reg_coeff · mean(relu(1 - std(ẑ))), default 0)
  L_SFT  : next-token CE over all non-pad positions (`loss.jepa.sft_on="future"`: future targets only)
  ẑ      = g_φ(z_ctx), z_ctx = online h[cut_idx] (causal: a function of the context alone)
  L_JEPA : mean over rows and dims of smooth_L1_β=1(ẑ, LN(z_tgt)), z_tgt = EMA target h[last_idx] (project default
           target "ctx_fut_last"; "fut_only_last" runs f_ξ on <bos> ⊕ x_fut; loss options cosine, l1, mse)
  λ      : `loss.jepa.weight` (1.0); schedule "joint" or "curriculum" (λ = 0 before curriculum_fraction · train.steps)
After every optimizer step the target moves: ξ ← m·ξ + (1−m)·θ, m linear from ema_start 0.996 to ema_end 1.0 over
train.steps (I-JEPA; spec §5 "EMA"). With weight 0 (`:sft_only`) the target forward is skipped: the baseline has the
same architecture, data and tokens and costs one forward. Collapse monitors (per-dim std of ẑ and z_ctx across the
batch, mean and min) are logged as train metrics.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from tessera.losses import registry
from tessera.losses.next_token import cross_entropy
from tessera.models.layers import ModelState

SCHEDULES = ("joint", "curriculum")
LATENT_LOSSES = ("smooth_l1", "cosine", "l1", "mse")
TARGETS = ("ctx_fut_last", "fut_only_last")
SFT_ON = ("all", "future")
BACKBONE = ("embed", "blocks", "final_norm", "unembed")  # the online encoder's params (the decoder's paths)


def layer_norm(z_BxD, eps=1e-6):
  """LN without affine parameters (I-JEPA's target normalisation)."""
  mean_Bx1 = jnp.mean(z_BxD, axis=-1, keepdims=True)
  return (z_BxD - mean_Bx1) * jax.lax.rsqrt(jnp.var(z_BxD, axis=-1, keepdims=True) + eps)


def latent_loss(kind, z_hat_BxD, z_tgt_BxD):
  """Per-row latent loss [B] between the prediction and the (stop-gradient) target; spec §5 options."""
  if kind == "cosine":
    cos_B = jnp.sum(z_hat_BxD * z_tgt_BxD, -1) / (
        jnp.linalg.norm(z_hat_BxD, axis=-1) * jnp.linalg.norm(z_tgt_BxD, axis=-1) + 1e-6)
    return 1.0 - cos_B
  diff_BxD = z_hat_BxD - layer_norm(z_tgt_BxD)
  if kind == "l1":
    return jnp.mean(jnp.abs(diff_BxD), -1)
  if kind == "mse":
    return jnp.mean(jnp.square(diff_BxD), -1)
  abs_BxD = jnp.abs(diff_BxD)  # smooth L1, beta = 1
  return jnp.mean(jnp.where(abs_BxD < 1.0, 0.5 * jnp.square(abs_BxD), abs_BxD - 0.5), -1)


def gather_rows(h_BxTxD, idx_B):
  return jnp.take_along_axis(h_BxTxD, idx_B[:, None, None].astype(jnp.int32), axis=1)[:, 0]


def std_stats(z_BxD, name):
  std_D = jnp.std(z_BxD, axis=0)
  return {f"{name}_std_mean": jnp.mean(std_D), f"{name}_std_min": jnp.min(std_D)}


def jepa_weight(cfg_jepa, train_steps, updates):
  """λ at optimizer step `updates` (0-based): constant (joint) or 0 before the curriculum switch."""
  if cfg_jepa.schedule == "joint":
    return jnp.float32(cfg_jepa.weight)
  switch = int(round(cfg_jepa.curriculum_fraction * train_steps))
  return jnp.where(updates >= switch, jnp.float32(cfg_jepa.weight), jnp.float32(0.0))


def ema_momentum(cfg_jepa, train_steps, step):
  """m after update `step` (0-based): linear from ema_start to ema_end over train.steps (I-JEPA)."""
  frac = jnp.minimum(step.astype(jnp.float32) / max(train_steps, 1), 1.0)
  return jnp.float32(cfg_jepa.ema_start) + (cfg_jepa.ema_end - cfg_jepa.ema_start) * frac


def ema_update(model, momentum):
  """ξ ← m·ξ + (1−m)·θ over the backbone, in place on `model.target`; returns ||θ − ξ_new||."""
  online = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  online = {k: v for k, v in online.items() if k in BACKBONE}
  target_state = nnx.state(model.target, ModelState)
  target = nnx.to_pure_dict(target_state)
  new = jax.tree.map(lambda t, o: (momentum * t.astype(jnp.float32) + (1 - momentum) * o.astype(jnp.float32)
                                   ).astype(t.dtype), target, online)
  nnx.replace_by_pure_dict(target_state, new)
  nnx.update(model.target, target_state)
  gaps = jax.tree.map(lambda t, o: jnp.sum(jnp.square(o.astype(jnp.float32) - t.astype(jnp.float32))), new, online)
  return jnp.sqrt(sum(jax.tree.leaves(gaps)))


def make_loss_fn(config):
  cfg = config.loss.jepa
  train_steps = config.train.steps
  uses_jepa = cfg.weight > 0

  def loss_fn(model, batch, rng):
    del rng
    inputs_BxT, cut_idx_B, last_idx_B = batch["inputs"], batch["cut_idx"], batch["last_idx"]
    h_BxTxD, logits_BxTxV = model.hidden(inputs_BxT, batch.get("positions"))
    mask_BxT = batch["loss_mask"]
    if cfg.sft_on == "future":
      mask_BxT = mask_BxT * (jnp.arange(inputs_BxT.shape[1])[None] >= cut_idx_B[:, None])
    sft, tokens = cross_entropy(logits_BxTxV, batch["targets"], mask_BxT)
    z_ctx_BxD = gather_rows(h_BxTxD, cut_idx_B)
    z_hat_BxD = model.predictor(z_ctx_BxD)
    metrics = {"sft_loss": sft, "tokens": tokens, **std_stats(z_hat_BxD, "z_hat"), **std_stats(z_ctx_BxD, "z_ctx")}
    loss = sft
    if uses_jepa:
      if cfg.target == "fut_only_last":  # f_ξ(<bos> ⊕ x_fut) at its last token
        z_tgt_BxD = gather_rows(model.target_hidden(batch["fut_inputs"]), batch["fut_last"])
      else:  # f_ξ(x) at last_idx: the state after observing the future (project default)
        z_tgt_BxD = gather_rows(model.target_hidden(inputs_BxT, batch.get("positions")), last_idx_B)
      jepa = jnp.mean(latent_loss(cfg.loss, z_hat_BxD, z_tgt_BxD))
      lam = jepa_weight(cfg, train_steps, model.updates[...])
      loss = loss + jnp.where(lam > 0, lam * jepa, 0.0)  # exact zeros before a curriculum switch
      if cfg.reg_coeff > 0:
        loss = loss + cfg.reg_coeff * jnp.mean(jax.nn.relu(1.0 - jnp.std(z_hat_BxD, axis=0)))
      metrics.update(jepa_loss=jepa, jepa_weight=lam, **std_stats(z_tgt_BxD, "z_tgt"),
                     **std_stats(layer_norm(z_tgt_BxD), "z_tgt_ln"))  # what ẑ is fit to
    metrics["loss"] = loss
    return loss, metrics

  return loss_fn


@registry.register("ehr_jepa")
def build(config):
  cfg = config.loss.jepa
  train_steps = config.train.steps

  def after_update(model, step):
    momentum = ema_momentum(cfg, train_steps, step)
    gap = ema_update(model, momentum)
    model.updates[...] = (step + 1).astype(jnp.int32)
    return {"ema_momentum": momentum, "ema_gap": gap}

  def end_of_run(model, pipeline, workdir):
    if not config.probe.at_end:
      return {}
    from tessera.losses import ehr_probe  # heavy (plots); only when probing
    return ehr_probe.end_of_run(config, model, pipeline, workdir)

  return registry.Objective(loss_fn=make_loss_fn(config), rules=(registry.Rule(after_update=after_update),),
                            end_of_run=end_of_run)


def _fail(key, message):
  raise ValueError(f"config key {key!r}: {message}")


def check(config):
  """loss.jepa.*, probe.* and the data window keys, for loss "ehr_jepa" (one-line errors, before any write)."""
  if config.loss.name != "ehr_jepa":
    return
  cfg = config.loss.jepa
  for key, choices in (("schedule", SCHEDULES), ("loss", LATENT_LOSSES), ("target", TARGETS), ("sft_on", SFT_ON)):
    if cfg[key] not in choices:
      _fail(f"loss.jepa.{key}", f"{cfg[key]!r} is not one of {list(choices)}")
  if not cfg.weight >= 0:
    _fail("loss.jepa.weight", f"must be >= 0, got {cfg.weight!r}")
  if not 0.0 <= cfg.curriculum_fraction < 1.0:
    _fail("loss.jepa.curriculum_fraction", f"must be in [0, 1), got {cfg.curriculum_fraction!r}")
  if not 0.0 <= cfg.ema_start <= cfg.ema_end <= 1.0:
    _fail("loss.jepa.ema_start", f"need 0 <= ema_start <= ema_end <= 1, got {cfg.ema_start!r}, {cfg.ema_end!r}")
  if cfg.reg_coeff < 0:
    _fail("loss.jepa.reg_coeff", f"must be >= 0, got {cfg.reg_coeff!r}")
  if config.model.name != "ehr_world":
    _fail("model.name", f"loss 'ehr_jepa' needs model 'ehr_world', got {config.model.name!r}")
  if config.data.name != "ehr_cuts":
    _fail("data.name", f"loss 'ehr_jepa' needs data 'ehr_cuts' (cut-point windows), got {config.data.name!r}")
  if config.data.ctx_len + config.data.fut_len != config.train.seq_len:
    _fail("train.seq_len", f"must equal data.ctx_len + data.fut_len = "
          f"{config.data.ctx_len + config.data.fut_len}, got {config.train.seq_len}")
  probe = config.get("probe")
  if probe is None:
    _fail("probe", "missing: loss 'ehr_jepa' reads probe.{at_end,tasks,bootstrap,iterations,batch} "
          "(configs/ehr_jepa.py)")
  for key in ("bootstrap", "iterations", "batch"):
    if not (isinstance(probe[key], int) and probe[key] >= 1):
      _fail(f"probe.{key}", f"must be an int >= 1, got {probe[key]!r}")
  if not isinstance(probe.get("target", True), bool):
    _fail("probe.target", f"must be true or false, got {probe.target!r}")


registry.rule(check=check)(lambda config: None)
