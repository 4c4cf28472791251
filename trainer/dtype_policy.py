"""`model.dtype="auto"`: the compute dtype (matmul inputs, activations; params stay in `param_dtype`) this machine
runs a training step fastest in, resolved once when the config is loaded, so config.json records the choice and a
resume keeps it even on another machine.

The rule, from side-by-side step measurements (docs/perf.md, issue 20): bfloat16 compute wins whole steps even where
an isolated bf16 matmul is slower than fp32 (AVX-512 without AMX: bf16 matmul 0.69x fp32, bf16 step 1.15x; Zen 3
without native bf16: step 1.29x; with AMX the bf16 matmul is several times fp32), because a step is mostly memory
traffic, which bf16 halves. So: GPU/TPU -> bfloat16; CPU -> bfloat16 unless its measured bf16 matmul rate (the
cached tessera.trainer.cpu_peak probe) is below MIN_BF16_RATIO of its fp32 rate (an emulated bf16 path), then
float32. Numerics of bfloat16 compute: matmuls take bf16 inputs with fp32 accumulation; RMSNorm statistics, RoPE,
attention logits and softmax, the output logits and the loss stay fp32 (tessera.models.layers, attention, decoder).
"""
AUTO = "auto"
MIN_BF16_RATIO = 0.5


def choose(backend=None, rates=None):
  """"float32" or "bfloat16" for `backend` (default: JAX's); `rates`: {dtype: matmul FLOP/s} (default: measured)."""
  import jax
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return "bfloat16"
  if rates is None:
    from tessera.trainer import cpu_peak  # cached per CPU model: a quick probe only the first time
    rates = {d: cpu_peak.peak((d,))[0] for d in ("float32", "bfloat16")}
  return "bfloat16" if rates["bfloat16"] >= MIN_BF16_RATIO * rates["float32"] else "float32"


def resolve(config):
  """Replaces `model.dtype="auto"` in `config` by `choose()`'s answer (any other value stays)."""
  if config.model.get("dtype") != AUTO:
    return config
  with config.unlocked():
    config.model.dtype = choose()
  return config
