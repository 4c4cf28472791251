"""Tiny random Hugging Face checkpoints written by the tests, and an independent numpy reference forward.

The reference follows the published architecture (transformers' modeling_llama / modeling_qwen3), not tessera's
code: torch Linear weights [out, in], rotate_half RoPE on cos/sin = cat(freqs, freqs), repeat_kv GQA (query head
h reads kv head h // (H / K)), pre-norm RMSNorm, Qwen3's per-head q/k RMSNorm before RoPE, Llama 3 rope scaling.
It runs in float64 so the comparison measures tessera's float32 error only.
"""
import importlib.util
import json
import math
import pathlib

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]

LLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=320, hidden_size=32,
             intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             hidden_act="silu", rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
             attention_bias=False, mlp_bias=False, max_position_embeddings=64, bos_token_id=0, eos_token_id=256,
             rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=16))
QWEN3 = dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=320, hidden_size=32,
             intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
             hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
             attention_bias=False, use_sliding_window=False, max_position_embeddings=64, eos_token_id=256)


def import_script(name):
  """scripts/<name>.py as a module (the scripts are files, not package modules)."""
  spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def hf_tensors(cfg, seed=0):
  """{HF name: float32 array} of a random model of `cfg` (norm weights away from 1 so they matter)."""
  rng = np.random.default_rng(seed)
  D, H, V, F = cfg["hidden_size"], cfg["num_attention_heads"], cfg["vocab_size"], cfg["intermediate_size"]
  K = cfg.get("num_key_value_heads", H)
  E = cfg.get("head_dim") or D // H
  w = lambda *shape: (0.2 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
  norm = lambda n: (1 + 0.3 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
  t = {"model.embed_tokens.weight": w(V, D), "model.norm.weight": norm(D)}
  if not cfg.get("tie_word_embeddings", False):
    t["lm_head.weight"] = w(V, D)
  for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    t.update({p + "input_layernorm.weight": norm(D), p + "post_attention_layernorm.weight": norm(D),
              p + "self_attn.q_proj.weight": w(H * E, D), p + "self_attn.k_proj.weight": w(K * E, D),
              p + "self_attn.v_proj.weight": w(K * E, D), p + "self_attn.o_proj.weight": w(D, H * E),
              p + "mlp.gate_proj.weight": w(F, D), p + "mlp.up_proj.weight": w(F, D),
              p + "mlp.down_proj.weight": w(D, F)})
    if cfg["model_type"] == "qwen3":
      t[p + "self_attn.q_norm.weight"], t[p + "self_attn.k_norm.weight"] = norm(E), norm(E)
    if cfg.get("attention_bias", False):
      t.update({p + "self_attn.q_proj.bias": w(H * E), p + "self_attn.k_proj.bias": w(K * E),
                p + "self_attn.v_proj.bias": w(K * E), p + "self_attn.o_proj.bias": w(D)})
  return t


def write_tokenizer(folder):
  """A byte-level tokenizer.json (ids 0..255 = bytes, 256 = <eos>) + tokenizer_config.json."""
  from tessera.data import text_tokenizer
  text_tokenizer.train("bytes", [], 0).save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "model_max_length": 64,
                                                            "tokenizer_class": "PreTrainedTokenizerFast"}))


def write_hf_folder(folder, cfg, *, seed=0, shards=1, dtype="float32", tokenizer=True):
  """A Hugging Face model folder: config.json, safetensors (one file or `shards` + index), tokenizer files.
  Returns the float32 tensors (what a bfloat16 checkpoint rounds them to when dtype is bfloat16)."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  tensors = hf_tensors(cfg, seed)
  if dtype == "bfloat16":
    tensors = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in tensors.items()}
  stored = {k: v.astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else v for k, v in tensors.items()}
  (folder / "config.json").write_text(json.dumps({**cfg, "torch_dtype": dtype}))
  names = sorted(stored)
  if shards == 1:
    save_file(stored, str(folder / "model.safetensors"), metadata={"format": "pt"})
  else:
    weight_map = {}
    for s in range(shards):
      file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
      part = {n: stored[n] for n in names[s::shards]}
      save_file(part, str(folder / file), metadata={"format": "pt"})
      weight_map.update({n: file for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  if tokenizer:
    write_tokenizer(folder)
  return tensors


# ---- the reference forward ----

def _rms(x, w, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def inv_freq(cfg, dim):
  """transformers' default rope init, then _compute_llama3_parameters when rope_scaling says llama3."""
  base = cfg.get("rope_theta", 10000.0)
  freqs = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
  scaling = cfg.get("rope_scaling") or {}
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind == "linear":
    return freqs / scaling["factor"]
  if kind != "llama3":
    return freqs
  factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
  old_len = scaling["original_max_position_embeddings"]
  out = []
  for f in freqs:
    wavelen = 2 * math.pi / f
    if wavelen < old_len / high:
      out.append(f)
    elif wavelen > old_len / low:
      out.append(f / factor)
    else:
      smooth = (old_len / wavelen - low) / (high - low)
      out.append((1 - smooth) * f / factor + smooth * f)
  return np.asarray(out)


def _rope(x_TxNxE, positions_T, freqs_F):
  angles_TxF = positions_T[:, None] * freqs_F[None, :]
  emb_TxE = np.concatenate([angles_TxF, angles_TxF], axis=-1)
  cos, sin = np.cos(emb_TxE)[:, None, :], np.sin(emb_TxE)[:, None, :]
  half = x_TxNxE.shape[-1] // 2
  rotated = np.concatenate([-x_TxNxE[..., half:], x_TxNxE[..., :half]], axis=-1)  # rotate_half
  return x_TxNxE * cos + rotated * sin


def reference_logits(cfg, tensors, tokens_T):
  """logits [T, V] of one sequence under the HF definition of `cfg` (float64)."""
  t = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
  D, H = cfg["hidden_size"], cfg["num_attention_heads"]
  K, E = cfg.get("num_key_value_heads", H), cfg.get("head_dim") or D // H
  eps, T = cfg["rms_norm_eps"], len(tokens_T)
  freqs = inv_freq(cfg, E)
  positions = np.arange(T, dtype=np.float64)
  x = t["model.embed_tokens.weight"][np.asarray(tokens_T)]
  causal = np.tril(np.ones((T, T), bool))
  for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    h = _rms(x, t[p + "input_layernorm.weight"], eps)
    proj = lambda n, x=h: x @ t[p + f"self_attn.{n}_proj.weight"].T + t.get(p + f"self_attn.{n}_proj.bias", 0)  # noqa
    q, k, v = proj("q").reshape(T, H, E), proj("k").reshape(T, K, E), proj("v").reshape(T, K, E)
    if cfg["model_type"] == "qwen3":
      q, k = _rms(q, t[p + "self_attn.q_norm.weight"], eps), _rms(k, t[p + "self_attn.k_norm.weight"], eps)
    q, k = _rope(q, positions, freqs), _rope(k, positions, freqs)
    k, v = np.repeat(k, H // K, axis=1), np.repeat(v, H // K, axis=1)  # repeat_kv
    scores = np.einsum("the,she->hts", q, k) / math.sqrt(E)
    scores = np.where(causal[None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn = np.einsum("hts,she->the", probs, v).reshape(T, H * E)
    x = x + attn @ t[p + "self_attn.o_proj.weight"].T + t.get(p + "self_attn.o_proj.bias", 0)
    h = _rms(x, t[p + "post_attention_layernorm.weight"], eps)
    gate = h @ t[p + "mlp.gate_proj.weight"].T
    x = x + (gate / (1 + np.exp(-gate)) * (h @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
  x = _rms(x, t["model.norm.weight"], eps)
  head = t["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else t["lm_head.weight"]
  return x @ head.T


def write_prepared(folder, tokenizer_json):
  """A small prepared dataset (byte tokens) for imported runs to evaluate and train on."""
  from tessera.data import prepare_text
  texts = pathlib.Path(folder).parent / "texts"
  texts.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  words = ["def", "return", "value", "import", "class", "self", "the", "data", "print", "for", "in", "range"]
  for i in range(12):
    (texts / f"{i}.txt").write_text(" ".join(rng.choice(words, 600)))
  prepare_text.prepare(["--input", str(texts), "--out", str(folder), "--tokenizer-file", str(tokenizer_json)])
  return pathlib.Path(folder)
