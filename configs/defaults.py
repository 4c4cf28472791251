"""The spine's config keys with their defaults (and the decoder family's `model` keys every LM shares).

Experiment configs start here, add their method's keys (configs/gg.py and the other method configs) and override.
Validation: tessera.trainer.validate checks these keys; each model, objective and rule checks its own
(tessera.models.registry.checks). ml_collections' lock rejects unknown keys and type-changing overrides.
"""
import ml_collections

# Logical parameter axes -> mesh axes. Params carry the logical names (tessera.models); this table is config data.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)


def base_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Python files or module names imported before the registries are read: a method kept outside the package
  # (e.g. a test's model and objective) registers itself this way; recorded in config.json, so resumes find it.
  c.imports = []

  # log_every_steps: the console's step line (also the first and last step); metrics.jsonl/TensorBoard get every step.
  # trainable: re.search pattern on '/'-joined parameter paths; non-matching params are frozen (state["frozen"]).
  # memory_budget_gb: per device, for the ahead-of-time memory check in setup (0 = the device's memory; CPU: 80% of
  # RAM shared by the local devices).
  c.train = ml_collections.ConfigDict(dict(
      steps=100, batch_size=8, seq_len=128, microbatches=1, log_every_steps=1, trainable=".*",
      memory_budget_gb=0.0))

  steps = c.train.get_ref("steps")
  c.optim = ml_collections.ConfigDict(dict(
      lr=3e-3, schedule="cosine", warmup_steps=steps // 20, lr_min_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8,
      clip=1.0, weight_decay=0.1, groups=[]))

  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=200, every_seconds=600.0, max_to_keep=3, keep_period=0, async_save=True))

  c.eval = ml_collections.ConfigDict(dict(every_steps=100, batches=4))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding = ml_collections.ConfigDict(dict(rules=[list(r) for r in DEFAULT_RULES]))

  # model.vocab_size=0: the data's tokenizer size padded to a multiple of 128 (byte tokenizer: 257 -> 384).
  # model.mlp: "swiglu" (Llama, 3 matrices) or "gelu" (GPT-2 / nanodo, 2 matrices: same FLOPs at 1.5x the d_ff).
  c.model = ml_collections.ConfigDict(dict(
      name="decoder", vocab_size=0, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=0,
      d_ff=512, mlp="swiglu", rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=True, dtype="float32",
      param_dtype="float32", remat="none", scan_layers=False, attention_impl="xla", init="normal",
      init_std=0.02,
      # Hugging Face architectures (docs/interop.md); the defaults are the plain decoder. qk_norm: Qwen3's per-head
      # RMSNorm of q and k; attn_bias: q/k/v/o biases; rope_scaling: none|linear|llama3 with its factors.
      qk_norm=False, attn_bias=False, rope_scaling="none", rope_factor=1.0, rope_low_freq_factor=1.0,
      rope_high_freq_factor=4.0, rope_original_max_len=8192))
  # loss.fused_ce_chunk (next_token): > 0 fuses the head and CE in chunks of that many tokens (custom VJP; 0: off).
  c.loss = ml_collections.ConfigDict(dict(name="next_token", fused_ce_chunk=0))
  c.data = ml_collections.ConfigDict(dict(name="embedded", path="", workers=0, prefetch=4))
  # init.workdir: load another run's latest params into the matching part of this model (init.map: a list of
  # "source_regex=target" rewrites of the source paths, re.sub with the first matching one, paths no rule matches
  # are not loaded; empty: every path as is; init.strict: every param must be loaded). --init-from W is init.workdir=W with init.strict=True.
  c.init = ml_collections.ConfigDict(dict(workdir="", map=[], strict=False))
  # metrics.wandb: also log to Weights & Biases (needs `pip install wandb`; WANDB_MODE=offline works without an
  # account). TensorBoard and metrics.jsonl are always written.
  c.metrics = ml_collections.ConfigDict(dict(wandb=False))
  c.profile = ml_collections.ConfigDict(dict(start_step=-1, num_steps=5))
  c.sample = ml_collections.ConfigDict(dict(prompt="def ", max_new_tokens=80, temperature=0.0))
  return c
