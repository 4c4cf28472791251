"""Knowledge editing for STEM models (stem.md §9): change the ids that drive the table lookups, not the text.

Every position holding SOURCE's tokens reads TARGET's rows instead, in all STEM layers; attention, the input
embedding and everything else still see the original tokens. Two ways:
  replace  one-for-one id swap (stem_ids differ from tokens only at SOURCE's positions);
  mean     at every SOURCE position, the mean of TARGET's rows (`stem_row_override`), for any token counts.
Pure functions on numpy ids plus a greedy decoder over any `logits_fn`; nothing here knows the trainer.
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


def greedy(logits_fn, prompt, steps, window, edit_fn=None):
  """Greedy continuation: `logits_fn(tokens_1xW, stem_ids_1xW, override) -> logits_1xWxV` on a fixed window
  (zero-padded, one compile). `edit_fn(tokens) -> (stem_ids, override)` is re-applied to the whole context at every
  step, so SOURCE tokens the model generates are edited too. Returns (new ids, log-softmax of each step)."""
  ids, logprobs = list(prompt), []
  for _ in range(steps):
    context = ids[-window:]
    stem_ids, override = edit_fn(context) if edit_fn else (np.array(context, np.int32), None)
    tokens_1xW = np.zeros((1, window), np.int32)
    stem_1xW = np.zeros((1, window), np.int32)
    tokens_1xW[0, :len(context)], stem_1xW[0, :len(context)] = context, stem_ids
    if override is not None:
      ids_TxK, weights_TxK = override
      pad = ((0, window - len(context)), (0, 0))
      override = (np.pad(ids_TxK, pad)[None], np.pad(weights_TxK, pad)[None])
    logits_V = np.asarray(logits_fn(tokens_1xW, stem_1xW, override))[0, len(context) - 1].astype(np.float64)
    logp_V = logits_V - logits_V.max() - np.log(np.exp(logits_V - logits_V.max()).sum())
    logprobs.append(logp_V)
    ids.append(int(np.argmax(logits_V)))
  return ids[len(prompt):], logprobs
