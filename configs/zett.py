"""ZeTT (../shared/specs/zett.md, issue 13): a hypernetwork that gives a frozen LM embeddings for any tokenizer.

  scripts/train --config configs/zett.py:base --workdir runs/base          # the base LM + its BPE 8192 (§8)
  scripts/train --config configs/zett.py:small --config.init.workdir=runs/base --workdir runs/zett
  scripts/train --config configs/zett.py:tiny_base --workdir runs/base_tiny                   # CI: seconds
  scripts/train --config configs/zett.py:tiny --config.init.workdir=runs/base_tiny --workdir runs/zett_tiny

`base`: the §8 base LM scaled for 2 cores: tessera decoder, 4 layers, d 256, untied embeddings, byte-level BPE 8192
on the train split of the embedded corpus (prepared automatically and cached: tessera.data.zett_corpus), ~3M tokens
(750 steps x 16 x 256). `small`: the §3 hypernet at §8 size (3 layers, h = d = 256, h_ff = 512, L = 7) with
n_total 2048 (+128 padded slots), a 16 x 32-text queue, 1/6 of train.steps as the identity stage (300 of 1800),
then L_LM + 0.5 L_aux. `tiny` / `tiny_base`: the same at CI size (a 512 BPE on 40 documents).
Trained: `hypernet/...` and `fallback` (train.trainable); frozen: the LM (`lm/...`, loaded from init.workdir by
init.map) and the rescalers (model state). `model.zett.residual=True` is the ALM residual variant (§3.11).
Optimizer (§6 at small scale): AdamW b1 0.9, b2 0.95, eps 1e-8, wd 0.01 (matrices only), clip 0.1; the §6 two-stage
LR (tessera.models.zett_optim, logged as train/zett_lr): linear 0 -> identity lr over the identity stage, then
linear 0 -> optim.lr over 5% of train.steps and cosine to 0.1x. Peaks (project default; §6's 3e-4 / 6e-5 are for
1B-7B LMs over 200k steps): small 1e-3 / 5e-4, tiny 1e-2 / 3e-3.
"""
from tessera.configs import defaults
from tessera.data import zett_pipeline
from tessera.losses import zett as zett_loss
from tessera.models import zett as zett_model
from tessera.models import zett_optim

_BASE = {
    # name: (d_model, n_layers, n_heads, d_ff, bpe_vocab, max_docs, batch, seq_len, steps, lr)
    "base": (256, 4, 4, 1024, 8192, 0, 16, 256, 750, 2e-3),
    "tiny_base": (64, 2, 4, 256, 512, 40, 8, 64, 20, 3e-3),
}
_HYPER = {
    # name: (base shape, hidden, ffn, layers, heads, n_total, queue_chunks, span_chars, batch, seq_len, steps, lr,
    #        identity-stage lr)
    "small": ("base", 256, 512, 3, 4, 2048, 16, 2048, 32, 128, 1800, 5e-4, 1e-3),
    "tiny": ("tiny_base", 64, 128, 2, 2, 512, 4, 512, 8, 64, 20, 3e-3, 1e-2),
}


def lm_config(arg):
  d_model, n_layers, n_heads, d_ff, bpe_vocab, max_docs, batch, seq_len, steps, lr = _BASE[arg]
  c = defaults.base_config()
  c.model.update(dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_heads, d_ff=d_ff,
                      tie_embeddings=False))
  c.data.update(dict(name="embedded_bpe", bpe_vocab_size=bpe_vocab, cache_dir="", max_docs=max_docs))
  c.train.update(dict(batch_size=batch, seq_len=seq_len, steps=steps))
  c.optim.update(dict(lr=lr, b1=0.9, b2=0.95, weight_decay=0.1, clip=1.0))
  c.eval.update(dict(every_steps=max(steps // 4, 1), batches=4))
  c.checkpoint.every_steps = max(steps // 4, 1)
  c.sample.prompt = "def "
  return c


def build(arg="small"):
  if arg in _BASE:
    return lm_config(arg)
  if arg not in _HYPER:
    raise ValueError(f"configs/zett.py: unknown variant {arg!r}; choose one of {sorted({**_BASE, **_HYPER})}")
  base, hidden, ffn, layers, heads, n_total, queue_chunks, span_chars, batch, seq_len, steps, lr, id_lr = _HYPER[arg]
  c = lm_config(base)
  c.model.name = "zett"
  zett_model.add_keys(c)
  c.model.zett.update(dict(hidden=hidden, ffn=ffn, n_layers=layers, n_heads=heads, n_slots=n_total + 128))
  c.loss.name = "zett"
  zett_loss.add_keys(c)
  c.train.update(dict(batch_size=batch, seq_len=seq_len, steps=steps, trainable="^(hypernet|fallback)"))
  zett_pipeline.add_keys(c)
  c.data.update(dict(bpe_vocab_size=_BASE[base][4], max_docs=_BASE[base][5]))
  c.data.zett.update(dict(n_total=n_total, queue_chunks=queue_chunks, span_chars=span_chars))
  c.init.map = ["^(.*)$=lm/\\1"]  # the base run's params go under the frozen LM's path
  c.optim.update(dict(lr=lr, weight_decay=0.01, clip=0.1, lr_min_ratio=0.1, schedule="cosine"))
  c.optim.warmup_steps = c.data.zett.get_ref("identity_steps")  # the trainer's (logged) schedule; applied: below
  zett_optim.add_keys(c, identity_lr=id_lr)
  c.eval.update(dict(every_steps=max(steps // 4, 1), batches=2))
  c.sample.max_new_tokens = 0  # the LM is frozen: its samples never change
  return c


def get_config(arg="small"):
  c = build(arg)
  c.lock()
  return c
