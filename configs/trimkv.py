"""TRIM-KV (shared/specs/trimkv.md, issue 12): retention gates trained on a frozen base LM by distillation.

  scripts/train --config configs/trimkv.py:base --workdir runs/base                 # the base LM (plain decoder)
  scripts/train --config configs/trimkv.py:small --config.init.workdir=runs/base --workdir runs/trimkv
  scripts/train --config configs/lm.py:tiny --workdir runs/lm_tiny                  # CI: a base in seconds
  scripts/train --config configs/trimkv.py:tiny --config.init.workdir=runs/lm_tiny --workdir runs/trimkv_tiny

Gate variants (tiny, small) train only `retention_gate` params (train.trainable, §6); every base weight is frozen
and loaded from `init.workdir` (same paths as the decoder's). Their model shape keys must match the base run's
(a mismatch fails at setup: "config key 'init.map': ... has shape ..."): `tiny` matches configs/lm.py:tiny,
`small` matches `base` here (the §9 shape: 4 layers, d 128, 4 query / 2 KV heads). Without init.workdir the
gates train on a randomly initialised base (only useful for smoke tests).
Optimizer (§6 project default, the paper is silent): AdamW lr 1e-3, betas (0.9, 0.95), no weight decay, warmup
train.steps // 20 (100 at 2000 steps), cosine to 10%, clip 1.0. Loss (§5 project defaults): forward KL + 1.0 CE +
1.0 capacity at M = 16 (§9), normalised by t + 1.
`base` trains the §9 decoder on the embedded corpus (the synthetic recall/copy pipeline of §9 is not built yet).
"""
import ml_collections

from tessera.configs import defaults

_VARIANTS = {
    # name: (d_model, n_layers, n_heads, n_kv_heads, d_ff, batch, seq_len, steps, gate_hidden)
    "tiny": (64, 2, 4, 2, 256, 8, 64, 20, 32),  # configs/lm.py:tiny's shape
    "small": (128, 4, 4, 2, 512, 16, 256, 600, 512),  # §9 (gates 600 steps x batch 16: issue 12's CPU scale)
    "base": (128, 4, 4, 2, 512, 16, 256, 2000, 512),  # the §9 base LM, trained with plain CE
}


def add_model_keys(c, gate_hidden=512):
  """model.name = trimkv and its gate keys (§3 defaults: variant rg, bias init 10, N(0, 0.02), mul_logit)."""
  c.model.name = "trimkv"
  c.model.trimkv = ml_collections.ConfigDict(dict(
      gate="rg", gate_hidden=gate_hidden, gate_bias_init=10.0, gate_init_std=0.02, retention_mode="mul_logit"))


def add_loss_keys(c, memory_size=16):
  """loss.name = trimkv and its keys (§5 project defaults)."""
  c.loss.name = "trimkv"
  c.loss.trimkv = ml_collections.ConfigDict(dict(
      memory_size=memory_size, retention_weight=1.0, ntp_weight=1.0, capacity_norm="t"))


def build(arg="small"):
  if arg not in _VARIANTS:
    raise ValueError(f"configs/trimkv.py: unknown variant {arg!r}; choose one of {sorted(_VARIANTS)}")
  d_model, n_layers, n_heads, n_kv_heads, d_ff, batch, seq_len, steps, gate_hidden = _VARIANTS[arg]
  c = defaults.base_config()
  c.model.update(dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=d_ff))
  c.train.update(dict(batch_size=batch, seq_len=seq_len, steps=steps))
  c.eval.every_steps = max(steps // 4, 1)
  if arg == "base":
    return c
  add_model_keys(c, gate_hidden)
  add_loss_keys(c)
  c.train.trainable = "retention_gate"
  c.optim.update(dict(lr=1e-3, b1=0.9, b2=0.95, weight_decay=0.0, clip=1.0, lr_min_ratio=0.1, schedule="cosine"))
  if arg == "tiny":  # CI: a visible capacity drop in 20 steps needs a large step from bias 10 (not the default)
    c.optim.lr = 5e-2
    c.eval.batches = 1
    c.sample.max_new_tokens = 8
  return c


def get_config(arg="small"):
  c = build(arg)
  c.lock()
  return c
