"""Hugging Face tensor names <-> tessera decoder param paths, with each tensor's layout change.

HF stores every projection as a torch Linear weight [out, in] with heads flattened into `out` (q_proj: [H*E, D]);
tessera keeps [in, out] with heads as their own axis (q: [D, H, E], o: [H, E, D]) so the logical axes can shard
heads. A layout is a pair of numpy functions (to_tessera, to_hf), exact inverses made only of reshapes and
transposes: a round trip is bit for bit. docs/interop.md prints this table.
"""
import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Layout:
  name: str  # the docs' name for it
  to_tessera: Callable  # (hf array, n heads) -> tessera array
  to_hf: Callable  # (tessera array, n heads) -> hf array


SAME = Layout("as is", lambda x, n: x, lambda x, n: x)
TRANSPOSE = Layout("transpose", lambda x, n: x.T, lambda x, n: x.T)
# [N*E, D] -> [D, N, E]: the input projections q, k, v
IN_HEADS = Layout("[N*E, D] -> [D, N, E]", lambda x, n: x.reshape(n, -1, x.shape[1]).transpose(2, 0, 1),
                  lambda x, n: x.transpose(1, 2, 0).reshape(-1, x.shape[0]))
# [D, H*E] -> [H, E, D]: the output projection o
OUT_HEADS = Layout("[D, H*E] -> [H, E, D]", lambda x, n: x.reshape(x.shape[0], n, -1).transpose(1, 2, 0),
                   lambda x, n: x.transpose(2, 0, 1).reshape(x.shape[2], -1))
# [N*E] -> [N, E]: the q, k, v biases
HEAD_VECTOR = Layout("[N*E] -> [N, E]", lambda x, n: x.reshape(n, -1), lambda x, n: x.reshape(-1))


@dataclasses.dataclass(frozen=True)
class Entry:
  hf: str  # HF tensor name
  path: tuple  # tessera params path (ints index the unrolled blocks)
  hf_shape: tuple  # what config.json implies
  layout: Layout
  heads: int = 1  # N for the head layouts


def layer_entries(model, i):
  """The tensors of decoder block `i` under `model` (tessera config.model keys)."""
  D, H, K, F = model.d_model, model.n_heads, model.n_kv_heads, model.d_ff
  E = model.head_dim or D // H
  hf, at = f"model.layers.{i}.", ("blocks", i)
  out = [
      Entry(hf + "input_layernorm.weight", at + ("attn_norm", "scale"), (D,), SAME),
      Entry(hf + "post_attention_layernorm.weight", at + ("mlp_norm", "scale"), (D,), SAME),
      Entry(hf + "self_attn.q_proj.weight", at + ("attn", "q"), (H * E, D), IN_HEADS, H),
      Entry(hf + "self_attn.k_proj.weight", at + ("attn", "k"), (K * E, D), IN_HEADS, K),
      Entry(hf + "self_attn.v_proj.weight", at + ("attn", "v"), (K * E, D), IN_HEADS, K),
      Entry(hf + "self_attn.o_proj.weight", at + ("attn", "o"), (D, H * E), OUT_HEADS, H),
      Entry(hf + "mlp.gate_proj.weight", at + ("mlp", "gate"), (F, D), TRANSPOSE),
      Entry(hf + "mlp.up_proj.weight", at + ("mlp", "up"), (F, D), TRANSPOSE),
      Entry(hf + "mlp.down_proj.weight", at + ("mlp", "down"), (D, F), TRANSPOSE),
  ]
  if model.get("qk_norm", False):
    out += [Entry(hf + "self_attn.q_norm.weight", at + ("attn", "q_norm", "scale"), (E,), SAME),
            Entry(hf + "self_attn.k_norm.weight", at + ("attn", "k_norm", "scale"), (E,), SAME)]
  if model.get("attn_bias", False):
    out += [Entry(hf + "self_attn.q_proj.bias", at + ("attn", "q_bias"), (H * E,), HEAD_VECTOR, H),
            Entry(hf + "self_attn.k_proj.bias", at + ("attn", "k_bias"), (K * E,), HEAD_VECTOR, K),
            Entry(hf + "self_attn.v_proj.bias", at + ("attn", "v_bias"), (K * E,), HEAD_VECTOR, K),
            Entry(hf + "self_attn.o_proj.bias", at + ("attn", "o_bias"), (D,), SAME)]
  return out


def entries(model):
  """Every tensor of the HF checkpoint of `model`, embeddings first."""
  V, D = model.vocab_size, model.d_model
  out = [Entry("model.embed_tokens.weight", ("embed",), (V, D), SAME)]
  for i in range(model.n_layers):
    out += layer_entries(model, i)
  out.append(Entry("model.norm.weight", ("final_norm", "scale"), (D,), SAME))
  if not model.tie_embeddings:
    out.append(Entry("lm_head.weight", ("unembed",), (V, D), TRANSPOSE))
  return out


# Tensors an HF checkpoint may hold that carry no information for the function (recomputed buffers; a tied
# lm_head saved anyway): skipped on import.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def ignorable(name, model):
  return name.endswith(IGNORED_SUFFIXES) or (name == "lm_head.weight" and model.tie_embeddings)


def get_path(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def set_path(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def unstack_layers(params):
  """A `model.scan_layers` params tree (blocks stacked on a leading axis) as the unrolled one: {i: block}."""
  blocks = params.get("blocks")
  if not isinstance(blocks, dict) or not blocks or all(isinstance(k, int) for k in blocks):
    return params
  import jax  # lazy: this module is otherwise numpy only
  n = jax.tree.leaves(blocks)[0].shape[0]
  return {**params, "blocks": {i: jax.tree.map(lambda a, i=i: a[i], blocks) for i in range(n)}}


def path_name(path):
  return "/".join(str(k) for k in path)
