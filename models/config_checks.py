"""Key checks for the decoder family's `config.model` (and the GG / 8-bit keys it reads), registered per model.

Each failure is a ValueError "config key '<key>': <why>", which the trainer turns into one line and exit 2 before
anything is written. Checks that need the mesh read `config.mesh` (an axis of -1 is checked later, on the built
parameters' shapes).
"""
from tessera.models import registry

DTYPES = ("float32", "bfloat16")
REMAT = ("none", "full", "dots")
ATTENTION = ("xla", "xla_blocked", "pallas", "cudnn", "auto")
NUMBER_FORMATS = ("rf8", "e4m3", "e5m2")  # tessera.models.numerics.FORMATS
FAN_MODES = ("reference", "fan_in")
ROPE_SCALINGS = ("none", "linear", "llama3")  # tessera.models.layers.ROPE_SCALINGS
MLPS = ("swiglu", "gelu")  # tessera.models.layers.MLPS


def fail(key, message):
  raise ValueError(f"config key {key!r}: {message}")


def require(condition, key, message):
  if not condition:
    fail(key, message)


def lookup(config, key):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def one_of(config, key, choices):
  value = lookup(config, key)
  require(value in choices, key, f"{value!r} is not one of {list(choices)}")


def positive_finite(config, key):
  value = lookup(config, key)
  require(isinstance(value, (int, float)) and value > 0 and value != float("inf"), key,
          f"must be a finite number > 0, got {value!r}")


@registry.checks("decoder")
def check_decoder(config):
  """Keys of tessera.models.decoder (also the backbone of every model built on it)."""
  m = config.model
  for key in ("dtype", "param_dtype"):  # dtype "auto" is resolved at load (tessera.trainer.dtype_policy)
    one_of(config, f"model.{key}", DTYPES)
  one_of(config, "model.remat", REMAT)
  if "mlp" in m:  # configs saved before the key build SwiGLU
    one_of(config, "model.mlp", MLPS)
  one_of(config, "model.attention_impl", ATTENTION)
  require(m.attention_impl != "cudnn", "model.attention_impl",
          "'cudnn' cannot mask packed documents (training batches carry segment ids; cuDNN attention takes none): "
          "use 'auto' (cuDNN wherever a call is plain attention, else the Pallas kernel) or 'pallas'")
  require(isinstance(m.vocab_size, int) and m.vocab_size >= 0, "model.vocab_size",
          f"must be >= 0 (0 = the tokenizer's size padded to a multiple of 128), got {m.vocab_size!r}")
  for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
    require(isinstance(m[key], int) and m[key] >= 1, f"model.{key}", f"must be a positive int, got {m[key]!r}")
  require(m.n_heads % m.n_kv_heads == 0, "model.n_kv_heads",
          f"model.n_heads={m.n_heads} is not a multiple of n_kv_heads={m.n_kv_heads}")
  require(m.head_dim > 0 or m.d_model % m.n_heads == 0, "model.d_model",
          f"{m.d_model} is not divisible by model.n_heads={m.n_heads} (or set model.head_dim)")
  for key in ("rope_theta", "norm_eps"):
    positive_finite(config, f"model.{key}")
  check_hf_keys(config)
  tensor = config.mesh.tensor
  if tensor > 1:
    for key in ("n_heads", "n_kv_heads", "vocab_size", "d_ff"):
      require(m[key] % tensor == 0 or (key == "vocab_size" and m[key] == 0), f"model.{key}",
              f"{m[key]} is not divisible by mesh.tensor={tensor}")
  check_numerics(config)


def check_hf_keys(config):
  """qk_norm, attn_bias, rope_scaling and its factors (read with defaults: configs saved before them still pass)."""
  m = config.model
  for key in ("qk_norm", "attn_bias"):
    require(isinstance(m.get(key, False), bool), f"model.{key}", f"must be True or False, got {m.get(key)!r}")
  if "rope_scaling" not in m:
    return
  one_of(config, "model.rope_scaling", ROPE_SCALINGS)
  if m.rope_scaling == "none":
    return
  for key in ("rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_len"):
    positive_finite(config, f"model.{key}")
  if m.rope_scaling == "llama3":
    require(m.rope_high_freq_factor > m.rope_low_freq_factor, "model.rope_high_freq_factor",
            f"must exceed model.rope_low_freq_factor={m.rope_low_freq_factor}, got {m.rope_high_freq_factor}")


def check_numerics(config):
  """model.gg (init="gg"), model.weight_format and model.fake_quant (gg_prior.md)."""
  m = config.model
  gg = m.get("gg")
  if gg is not None:
    require(0 < gg.shape <= 3, "model.gg.shape", f"the GG shape nu must be in (0, 3], got {gg.shape}")
    require(gg.xi > 0, "model.gg.xi", f"must be > 0 (2 = He), got {gg.xi}")
    one_of(config, "model.gg.fan_mode", FAN_MODES)
  if "weight_format" in m:
    one_of(config, "model.weight_format", ("float", *NUMBER_FORMATS))
    require(m.weight_format == "float", "model.weight_format",
            f"{m.weight_format!r} checkpoints (scripts/quantize) are for eval/sample; train in float "
            "(model.fake_quant for quantization-aware training)")
  if "fake_quant" in m:
    one_of(config, "model.fake_quant", ("none", *NUMBER_FORMATS))
