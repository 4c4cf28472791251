"""Hugging Face config.json <-> tessera `config.model` keys for LlamaForCausalLM and Qwen3ForCausalLM.

Pure dict work, no arrays: scripts/import_hf and scripts/export_hf call it before reading or writing any weight,
so an unsupported architecture or option fails in one line (HFError) before anything is written. What the
decoder cannot compute (sliding windows, MLP biases, yarn/dynamic rope, other activations) is refused, never
silently dropped: an imported run must compute the same function as the checkpoint.
"""

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3"}
ROPE_TYPES = ("default", "linear", "llama3")
# HF fields copied through an import -> export round trip but not used by the decoder.
PASSTHROUGH = ("bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings", "initializer_range",
               "torch_dtype", "dtype", "transformers_version", "use_cache")


class HFError(ValueError):
  """Bad input: one line naming the file (and tensor) at fault; the scripts exit 2 on it."""


def _rope(hf, where):
  """(rope_theta, {tessera rope keys}) from `rope_scaling` (transformers <= 4.x) or `rope_parameters` (5.x)."""
  params = dict(hf.get("rope_parameters") or {})
  scaling = dict(hf.get("rope_scaling") or {}) or params
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind not in ROPE_TYPES:
    raise HFError(f"{where}: rope type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
  if kind == "default":
    return theta, {"rope_scaling": "none"}
  keys = {"rope_scaling": kind, "rope_factor": float(scaling["factor"])}
  if kind == "llama3":
    keys.update(rope_low_freq_factor=float(scaling["low_freq_factor"]),
                rope_high_freq_factor=float(scaling["high_freq_factor"]),
                rope_original_max_len=int(scaling["original_max_position_embeddings"]))
  return theta, keys


def model_keys(hf, where="config.json"):
  """tessera `config.model` keys (name "decoder") computing the function the HF config describes."""
  architectures = hf.get("architectures") or []
  arch = architectures[0] if architectures else None
  if arch not in ARCHITECTURES:
    raise HFError(f"{where}: architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
  family = ARCHITECTURES[arch]
  if hf.get("hidden_act", "silu") != "silu":
    raise HFError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (SwiGLU with silu only)")
  if hf.get("mlp_bias", False):
    raise HFError(f"{where}: mlp_bias=true is not supported")
  if hf.get("use_sliding_window", False):
    raise HFError(f"{where}: use_sliding_window=true is not supported (full attention only)")
  try:
    d_model, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    theta, rope = _rope(hf, where)
    keys = dict(
        name="decoder", vocab_size=int(hf["vocab_size"]), d_model=d_model, n_layers=int(hf["num_hidden_layers"]),
        n_heads=n_heads, n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=int(hf.get("head_dim") or d_model // n_heads), d_ff=int(hf["intermediate_size"]),
        rope_theta=theta, norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), qk_norm=family == "qwen3",
        attn_bias=bool(hf.get("attention_bias", False)), **rope)
  except KeyError as e:
    raise HFError(f"{where}: no {e.args[0]!r} field (not a {arch} config)") from None
  except (TypeError, ValueError) as e:
    raise HFError(f"{where}: unreadable field ({e})") from None
  return keys


def hf_config(model, base=None):
  """An HF config.json dict for tessera `config.model` `model`; `base` (the imported folder's config, when the run
  came from one) supplies the fields the decoder does not use (token ids, max positions)."""
  if model.get("qk_norm", False):
    arch, model_type = "Qwen3ForCausalLM", "qwen3"
  else:
    arch, model_type = "LlamaForCausalLM", "llama"
  out = {k: v for k, v in (base or {}).items() if k in PASSTHROUGH}
  out.setdefault("max_position_embeddings", 2048)
  out.pop("dtype", None)
  out["torch_dtype"] = "float32" if model.param_dtype == "float32" else "bfloat16"
  head_dim = model.head_dim or model.d_model // model.n_heads
  out.update(
      architectures=[arch], model_type=model_type, vocab_size=model.vocab_size, hidden_size=model.d_model,
      intermediate_size=model.d_ff, num_hidden_layers=model.n_layers, num_attention_heads=model.n_heads,
      num_key_value_heads=model.n_kv_heads, head_dim=head_dim, hidden_act="silu", rms_norm_eps=model.norm_eps,
      rope_theta=model.rope_theta, tie_word_embeddings=model.tie_embeddings,
      attention_bias=bool(model.get("attn_bias", False)), attention_dropout=0.0)
  if model_type == "llama":
    out["mlp_bias"] = False
  else:
    out["use_sliding_window"] = False
  kind = model.get("rope_scaling", "none")
  out["rope_scaling"] = None
  if kind != "none":
    out["rope_scaling"] = {"rope_type": kind, "factor": model.rope_factor}
    if kind == "llama3":
      out["rope_scaling"].update(low_freq_factor=model.rope_low_freq_factor,
                                 high_freq_factor=model.rope_high_freq_factor,
                                 original_max_position_embeddings=int(model.rope_original_max_len))
  return out
