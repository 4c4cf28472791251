"""Tiny LMs and cache-free references shared by the generation tests."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from tessera.models import attention, registry

VOCAB = 64


def cfg(kind="decoder", **overrides):
  """decoder (MHA), gqa (4 query heads on 1 KV head), stem (STEM FFNs in layers 1 and 3), scan (scanned GQA)."""
  c = ConfigDict(dict(
      name="decoder", vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=0, d_ff=64,
      rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=True, dtype="float32", param_dtype="float32",
      remat="none", scan_layers=False, attention_impl="xla", init_std=0.1, init="normal"))
  if kind in ("gqa", "scan"):
    c.n_kv_heads = 1 if kind == "gqa" else 2
    c.scan_layers = kind == "scan"
  elif kind == "stem":
    c.update(dict(name="stem", n_layers=4, n_kv_heads=2, d_ff=48, tie_embeddings=False, init="lingua"))
    c.stem = ConfigDict(dict(layers=[1, 3], table_init="normal_1", lookup_impl="xla", offload=False))
  c.update(overrides)
  return c


def build(c, seed=0):
  with nnx.use_eager_sharding(False):
    return registry.get(c.name)(c, nnx.Rngs(seed))


def prompts(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, VOCAB, n).tolist() for n in lengths]


def masked_attend(visible_TxS):
  """A drop-in for attention.attend where query t sees key s iff visible[t, s] (a sliding window, sinks...)."""
  visible_TxS = jnp.asarray(visible_TxS)

  def attend(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, segment_ids_BxT, implementation):
    del segment_ids_BxT, implementation
    B, T, H, D = q_BxTxHxD.shape
    K = k_BxSxKxD.shape[2]
    q_BxTxKxGxD = q_BxTxHxD.reshape(B, T, K, H // K, D)
    logits = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxD, k_BxSxKxD, precision="highest") * D ** -0.5
    probs = jax.nn.softmax(jnp.where(visible_TxS, logits, attention.MASK_VALUE), axis=-1)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v_BxSxKxD, precision="highest").reshape(B, T, H, D)
  return attend


def reference_logits(model, tokens_T, monkeypatch=None, visible_TxT=None):
  """Logits [T, V] of one cache-free forward; with `visible_TxT`, every layer's attention uses that mask."""
  if visible_TxT is not None:
    monkeypatch.setattr(attention, "attend", masked_attend(visible_TxT))
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, tokens: nnx.merge(graphdef, state)(tokens))  # fresh: traced with the patch
  return np.asarray(forward(state, jnp.asarray([tokens_T], jnp.int32)))[0]


def cache_schedule(prompt_len, new_tokens, budget, buffer, sinks=0):
  """visible[t, s] of a bounded cache (window / sink_window), simulated in Python: prompt rows see their prefix
  (prefill), decode row t sees what the cache holds after writing t (compacted to `budget` at `budget + buffer`)."""
  T = prompt_len + new_tokens - 1  # the last new token is never fed
  visible = np.tril(np.ones((T, T), bool))
  keep = lambda held: sorted(held)[:sinks] + sorted(held)[sinks - budget:] if sinks else sorted(held)[-budget:]
  held = list(range(prompt_len))
  if len(held) >= budget + buffer:
    held = keep(held)
  for t in range(prompt_len, T):
    held.append(t)
    if len(held) >= budget + buffer:
      held = keep(held)
    visible[t] = False
    visible[t, held] = True
  return visible
