"""Every config key the trainer knows, with its default: experiment configs start here and override.

Keys are grouped the way the trainer consumes them. Validation (tessera.trainer.validate) checks values;
ml_collections' lock rejects unknown keys and type-changing overrides.
"""
import ml_collections

# Logical parameter axes -> mesh axes. Params carry the logical names (tessera.models); this table is config data.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("stem_vocab", None),  # STEM tables: replicated along V (sharding it over batch axes all-gathers every step)
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)


def base_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.train = ml_collections.ConfigDict(dict(
      steps=100, batch_size=8, seq_len=128, microbatches=1, log_every_steps=1))

  steps = c.train.get_ref("steps")
  c.optim = ml_collections.ConfigDict(dict(
      lr=3e-3, schedule="cosine", warmup_steps=steps // 20, lr_min_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
      clip=1.0, weight_decay=0.1, groups=[], stem_update="dense"))

  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=200, every_seconds=600.0, max_to_keep=3, keep_period=0, async_save=True))

  c.eval = ml_collections.ConfigDict(dict(every_steps=100, batches=4))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding = ml_collections.ConfigDict(dict(rules=[list(r) for r in DEFAULT_RULES]))

  # model.vocab_size=0: the data's tokenizer size padded to a multiple of 128 (byte tokenizer: 257 -> 384).
  c.model = ml_collections.ConfigDict(dict(
      name="decoder", vocab_size=0, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=0,
      d_ff=512, rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=True, dtype="float32",
      param_dtype="float32", remat="none", scan_layers=False, attention_impl="xla", init="normal",
      init_std=0.02, weight_format="float", fake_quant="none"))
  # model.init="gg" (gg_prior.md §3): every >= 2-D weight ~ GG(0, alpha, shape) with variance xi/n; n is the output
  # size of a kernel and V of an embedding ("reference") or the input size ("fan_in"). weight_format: how the
  # checkpoint stores >= 2-D weights ("float", or 8-bit codes "rf8"|"e4m3"|"e5m2" written by scripts/quantize, for
  # eval/sample); fake_quant: "none" or a format whose quantise-dequantise runs in the forward (straight-through).
  c.model.gg = ml_collections.ConfigDict(dict(shape=1.0, xi=2.0, fan_mode="reference"))
  # STEM (model.name="stem"): layers None = all but layer 0, or "1/3" | "1/2" | "all" | a list of indices.
  # offload: tables and their Adam moments in pinned host memory, only the batch's unique rows moved to the device;
  # needs optim.stem_update="sparse_rows" and train.microbatches=1 (stem.md §8).
  c.model.stem = ml_collections.ConfigDict(dict(
      layers=None, table_init="xavier_normal", lookup_impl="xla", offload=False))

  c.loss = ml_collections.ConfigDict(dict(name="next_token"))
  # BackSlash (gg_prior.md §5): a rate step on the weights after every optimizer update while
  # step < end_fraction * train.steps; lam 0 = the project default 2e3 * N / 1.24e8 (2e3 from 1e7 params).
  # weight_stats: log nu-hat, entropy/Exp-Golomb bits per param and weight histograms at every eval (always on with
  # BackSlash).
  c.regularizer = ml_collections.ConfigDict(dict(weight_stats=False))
  c.regularizer.backslash = ml_collections.ConfigDict(dict(
      enabled=False, lam=0.0, clip=1.0, pool="all", end_fraction=0.75))
  c.data = ml_collections.ConfigDict(dict(name="embedded", path="", workers=0, prefetch=4))
  c.profile = ml_collections.ConfigDict(dict(start_step=-1, num_steps=5))
  c.sample = ml_collections.ConfigDict(dict(prompt="def ", max_new_tokens=80, temperature=0.0))
  return c
