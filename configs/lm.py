"""Llama-style decoder LM on the embedded corpus (or a prepared dataset via data.path).

  scripts/train --config configs/lm.py:small --config.optim.lr=1e-3 --config.train.steps=200 --workdir runs/x
  scripts/train --config configs/lm.py:small --sweep          # every override set of sweep()

Variants: `tiny` (tests, seconds), `small` (the CPU workhorse, ~0.3 s/step on 2 cores), `base` (one GPU/TPU host).
"""
from tessera.configs import defaults
from tessera.configs import gg

_VARIANTS = {
    # name: (d_model, n_layers, n_heads, n_kv_heads, d_ff, batch, seq_len, steps)
    "tiny": (64, 2, 4, 2, 256, 8, 64, 20),
    "small": (128, 4, 8, 4, 512, 16, 128, 300),  # heads and KV heads divisible by 2 and 4 (mesh.tensor)
    "base": (1024, 16, 16, 8, 4096, 64, 1024, 20000),
}


def build(arg="small"):
  """The unlocked config of a variant (other configs start from it)."""
  if arg not in _VARIANTS:
    raise ValueError(f"configs/lm.py: unknown variant {arg!r}; choose one of {sorted(_VARIANTS)}")
  d_model, n_layers, n_heads, n_kv_heads, d_ff, batch, seq_len, steps = _VARIANTS[arg]
  c = defaults.base_config()
  c.model.update(dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=d_ff))
  c.train.update(dict(batch_size=batch, seq_len=seq_len, steps=steps))
  c.eval.every_steps = max(steps // 4, 1)
  if arg == "base":  # a 32k BPE of the embedded corpus, prepared once and cached (or your own data.path)
    c.model.update(dict(dtype="bfloat16", remat="dots", scan_layers=True))
    c.data.update(dict(name="embedded_bpe", bpe_vocab_size=32768, cache_dir="", max_docs=0))
    c.optim.lr = 3e-4
  gg.add_keys(c)
  return c


def get_config(arg="small"):
  c = build(arg)
  c.lock()
  return c


def sweep():
  """Override sets for `--sweep`: each runs in <workdir>/<key=value,...>."""
  for lr in (1e-3, 3e-3):
    for seed in (0, 1):
      yield {"optim.lr": lr, "seed": seed}
