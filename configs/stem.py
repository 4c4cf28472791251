"""STEM transformers (arXiv 2601.10639; ../shared/specs/stem.md): per-layer token-indexed tables replace the FFN
up-projection in `model.stem.layers`. Every variant has a dense twin with identical everything else.

  scripts/train --config configs/stem.py:small            # CPU: d=128, L=4, STEM layers [1, 3], byte vocab
  scripts/train --config configs/stem.py:small_dense      # the same with model.stem.layers=[] (dense SwiGLU)
  scripts/train --config configs/stem.py:small --sweep    # dense / 1/3 / 1/2 / all, and table_init=normal_1
  scripts/edit_knowledge --workdir runs/stem_small --prompt "Return the value of the " --swap " the= a"

`base` / `base_dense` (one GPU): d=512, L=8, F=1536, V=32k, every other layer STEM, T=1024. `tiny` / `tiny_dense`:
CI size (d=64, L=2, STEM layer 1, 20 steps).
Optimizer (spec §6): AdamW b1 0.9, b2 0.95, eps 1e-8, wd 0.1, warmup + cosine; the tables are their own parameter
group (pattern "stem_table", same hyperparameters) so each group clips its own gradient norm; dense AdamW over the
whole table (`optim.stem_update=sparse_rows` is the non-paper lazy variant). Backbone init: Lingua's.
"""
import ml_collections

from tessera.configs import defaults
from tessera.configs import gg

_VARIANTS = {
    # name: (d_model, n_layers, n_heads, d_ff, vocab_size (0: tokenizer's), seq_len, batch, steps, lr,
    #        warmup as a fraction of train.steps)
    "tiny": (64, 2, 4, 192, 0, 64, 8, 20, 3e-3, 0.05),  # tests and docstring checks: seconds on a CPU
    "small": (128, 4, 4, 384, 0, 256, 16, 2000, 3e-3, 0.05),
    "base": (512, 8, 8, 1536, 0, 1024, 64, 20000, 3e-4, 0.1),
}
STEM_LAYERS = {"tiny": [1], "small": [1, 3], "base": [1, 3, 5, 7]}


def add_keys(c):
  """The keys the STEM method reads (tessera.models.stem_method checks them).

  model.stem.layers: None = all but layer 0, or "1/3" | "1/2" | "all" | a list of indices; table_init:
  "xavier_normal" | "normal_1"; lookup_impl: "xla" | "pallas" | "auto"; offload: tables and their Adam moments in
  pinned host memory, only the batch's unique rows moved to the device (needs sparse_rows, microbatches=1; stem.md
  section 8). optim.stem_update="sparse_rows" is the shorthand for `update="sparse_rows"` on the optimizer group
  that holds the tables ("dense", the paper's, changes nothing).
  """
  c.model.stem = ml_collections.ConfigDict(dict(
      layers=ml_collections.FieldReference(None, field_type=object),  # a list of indices or a fraction's name
      table_init="xavier_normal", lookup_impl="xla", offload=False))
  c.optim.stem_update = "dense"
  return c


def build(arg="small"):
  """The unlocked config of a variant (quickstart.py starts from `small`)."""
  base_arg = arg.removesuffix("_dense")
  if base_arg not in _VARIANTS:
    raise ValueError(f"configs/stem.py: unknown variant {arg!r}; choose one of "
                     f"{sorted(_VARIANTS) + [v + '_dense' for v in sorted(_VARIANTS)]}")
  d_model, n_layers, n_heads, d_ff, vocab, seq_len, batch, steps, lr, warmup = _VARIANTS[base_arg]
  c = add_keys(gg.add_keys(defaults.base_config()))
  c.model.update(dict(name="stem", d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_heads,
                      d_ff=d_ff, vocab_size=vocab, tie_embeddings=False, init="lingua"))
  c.model.stem.layers = [] if arg.endswith("_dense") else STEM_LAYERS[base_arg]
  c.train.update(dict(batch_size=batch, seq_len=seq_len, steps=steps))
  c.optim.warmup_steps = (c.train.get_ref("steps") * warmup).to_int()  # follows train.steps overrides
  c.optim.update(dict(lr=lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip=1.0,
                      groups=[{"pattern": "stem_table", "clip": 1.0}]))
  c.eval.update(dict(every_steps=100, batches=8))
  c.sample.prompt = "The "
  if base_arg == "base":  # the official stem_debug optimizer settings (spec §6, project default at scale)
    c.model.dtype = "bfloat16"  # on a 32k BPE of the embedded corpus (prepared once, cached), or data.path
    c.data.update(dict(name="embedded_bpe", bpe_vocab_size=32768, cache_dir="", max_docs=0))
    c.optim.update(dict(lr_min_ratio=1e-6, clip=10.0, groups=[{"pattern": "stem_table", "clip": 10.0}]))
    c.eval.every_steps = 1000
  return c


def get_config(arg="small"):
  c = build(arg)
  c.lock()
  return c


def sweep():
  """dense, STEM 1/3, 1/2, all and 1/2 with normal_1 tables. Fractions are resolved against the variant's own depth
  (tessera.models.stem.FRACTIONS: 4 layers -> 1/3 = [1], 1/2 = [1, 3]; 8 layers -> [1, 4, 7], [1, 3, 5, 7])."""
  for layers in ([], "1/3", "1/2", "all"):
    yield {"model.stem.layers": layers}
  yield {"model.stem.layers": "1/2", "model.stem.table_init": "normal_1"}
