"""Knowledge editing for STEM models (stem.md §9): change the ids that drive the table lookups, not the text.

Every position holding SOURCE's tokens reads TARGET's rows instead, in all STEM layers; attention, the input
embedding and everything else still see the original tokens. Two ways:
  replace  one-for-one id swap (stem_ids differ from tokens only at SOURCE's positions);
  mean     at every SOURCE position, the mean of TARGET's rows (`stem_row_override`), for any token counts.
Pure functions on numpy ids plus `continue_greedy` on the generation engine; nothing here knows the trainer.
"""
import numpy as np


def occurrences(tokens_T, source_S):
  """Start positions of every (non-overlapping) occurrence of `source_S` in `tokens_T`."""
  tokens_T, source_S = list(tokens_T), list(source_S)
  starts, i = [], 0
  while source_S and i + len(source_S) <= len(tokens_T):
    if tokens_T[i:i + len(source_S)] == source_S:
      starts.append(i)
      i += len(source_S)
    else:
      i += 1
  return starts


def aligned_target(source_S, target_K, token_bytes=None):
  """TARGET's ids fitted to SOURCE's length: equal -> as is; shorter -> repeated cyclically; longer -> the
  len(SOURCE) longest tokens by byte length (`token_bytes[id]`), kept in their original order."""
  S, K = len(source_S), len(target_K)
  if K <= S:
    return [target_K[i % K] for i in range(S)]
  sizes = [token_bytes[t] if token_bytes is not None else 1 for t in target_K]
  keep = sorted(sorted(range(K), key=lambda i: -sizes[i])[:S])  # stable: ties keep the earlier tokens
  return [target_K[i] for i in keep]


def replace_ids(tokens_T, source_S, target_K, token_bytes=None):
  """stem_ids_T: tokens with every SOURCE occurrence's ids replaced by `aligned_target`."""
  stem_ids_T = np.array(tokens_T, np.int32)
  replacement = aligned_target(list(source_S), list(target_K), token_bytes)
  for start in occurrences(tokens_T, source_S):
    stem_ids_T[start:start + len(source_S)] = replacement
  return stem_ids_T


def mean_override(tokens_T, source_S, target_K):
  """(ids_TxK, weights_TxK): weights 1/K on TARGET's ids at every SOURCE position, 0 elsewhere."""
  T, K = len(tokens_T), len(target_K)
  ids_TxK = np.zeros((T, K), np.int32)
  weights_TxK = np.zeros((T, K), np.float32)
  for start in occurrences(tokens_T, source_S):
    ids_TxK[start:start + len(source_S)] = np.asarray(target_K, np.int32)
    weights_TxK[start:start + len(source_S)] = 1.0 / K
  return ids_TxK, weights_TxK


def edit(tokens_T, source_S, target_K, mode="replace"):
  """(stem_ids_T, override or None, mode used): `replace` needs equal token counts, else it falls back to mean."""
  if mode not in ("replace", "mean"):
    raise ValueError(f"--mode: {mode!r} is not 'replace' or 'mean'")
  if mode == "replace" and len(source_S) == len(target_K):
    return replace_ids(tokens_T, source_S, target_K), None, "replace"
  return np.array(tokens_T, np.int32), mean_override(tokens_T, source_S, target_K), "mean"


def continue_greedy(model, prompt, steps, source_S=None, target_K=None, mode="replace", vocab_size=None):
  """Greedy continuation of `prompt` by the generation engine (KV cache), optionally edited: SOURCE's lookups in
  the prompt read TARGET's rows (`edit`), and so do generated tokens when SOURCE is one token (the lookup at decode
  uses the new token's id; a multi-token SOURCE completed by generated tokens is not edited, since the cache already
  holds its first tokens). Returns (new ids, log-softmax [V] of each step)."""
  from tessera.models import generate  # lazy: the pure-numpy helpers above need no JAX
  prefill_kwargs, step_kwargs = None, None
  if source_S is not None:
    stem_ids_T, override, mode = edit(prompt, source_S, target_K, mode)
    prefill_kwargs = {"stem_ids_BxT": np.asarray(stem_ids_T)[None],
                      "stem_row_override": None if override is None else tuple(x[None] for x in override)}
    if len(source_S) == 1:
      step_kwargs = _decode_edit(int(source_S[0]), list(target_K), mode)
  out = generate.generate(model, [list(prompt)], steps, vocab_size=vocab_size, return_logits=True,
                          prefill_kwargs=prefill_kwargs, step_kwargs=step_kwargs)
  logits_NxV = out.logits_BxNxV[0].astype(np.float64)
  if vocab_size is not None:
    logits_NxV = logits_NxV[:, :vocab_size]
  top = logits_NxV.max(-1, keepdims=True)
  logp_NxV = logits_NxV - top - np.log(np.exp(logits_NxV - top).sum(-1, keepdims=True))
  return out.tokens[0], list(logp_NxV)


def _decode_edit(source, target_K, mode):
  """step_kwargs for the engine: a new token equal to the one-token SOURCE looks up TARGET's row (replace) or the
  mean of TARGET's rows (mean)."""
  import jax.numpy as jnp
  if mode == "replace":
    target = int(target_K[0])
    return lambda tokens_Bx1: {"stem_ids_BxT": jnp.where(tokens_Bx1 == source, target, tokens_Bx1)}
  ids_K = jnp.asarray(target_K, jnp.int32)

  def mean(tokens_Bx1):
    hit_Bx1x1 = (tokens_Bx1 == source)[..., None]
    ids_Bx1xK = jnp.broadcast_to(ids_K, (*tokens_Bx1.shape, len(target_K)))
    return {"stem_row_override": (ids_Bx1xK, jnp.where(hit_Bx1x1, 1.0 / len(target_K), 0.0))}
  return mean
