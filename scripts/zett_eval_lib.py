"""Tokenizer-agnostic evaluation of an LM under any tokenizer and embedding tables (zett.md §7): bits per byte
and tokens per byte on the held-out prose and code of tessera.data.zett_corpus.

Each held-out document is encoded alone and cut into rows of seq_len + 1 tokens (the last row padded, no loss on
padding); bits per byte = sum of next-token CE over predicted tokens / ln 2 / UTF-8 bytes of those tokens
(tokens' own byte lengths, so a row's unpredicted first token counts for no tokenizer). Tokens per byte = all
tokens of the encoding / all UTF-8 bytes.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tessera.data import zett_corpus

ROWS_PER_CALL = 16


def held_out(max_chars=0):
  """{"prose": [text...], "code": [text...]} of the held-out 10% (each domain capped at max_chars if > 0)."""
  _, held = zett_corpus.split()
  out = {"prose": [], "code": []}
  for doc in held:
    if doc.text.strip():
      out["prose" if zett_corpus.is_prose(doc) else "code"].append(doc.text)
  if max_chars > 0:
    for key, texts in out.items():
      kept, total = [], 0
      for t in texts:
        if total >= max_chars:
          break
        kept.append(t[:max_chars - total])
        total += len(kept[-1])
      out[key] = kept
  return out


def rows(tokenizer, texts, seq_len, pad_id):
  """(tokens [R, T+1] int32, mask [R, T] float32, total tokens, total bytes)."""
  all_rows, masks, n_tokens, n_bytes = [], [], 0, 0
  for text, enc in zip(texts, tokenizer.encode_batch(texts, add_special_tokens=False)):
    ids = np.asarray(enc.ids, np.int32)
    n_tokens += len(ids)
    n_bytes += len(text.encode("utf-8"))
    for start in range(0, max(len(ids) - 1, 0), seq_len):
      piece = ids[start:start + seq_len + 1]
      row = np.full((seq_len + 1,), pad_id, np.int32)
      row[:len(piece)] = piece
      mask = np.zeros((seq_len,), np.float32)
      mask[:len(piece) - 1] = 1.0
      all_rows.append(row)
      masks.append(mask)
  return np.stack(all_rows), np.stack(masks), n_tokens, n_bytes


class Scorer:
  """Sums of CE for the frozen LM of a ZettModel under given tables (one compile per vocabulary size)."""

  def __init__(self, model, lm_state=None):
    self.graphdef, self.state = nnx.split(model)
    if lm_state is not None:  # another run's blocks/norm (continued training), same shapes
      self.state = lm_state
    self._fn = jax.jit(self._nll)

  def _nll(self, state, tokens_BxT1, mask_BxT, e_in, e_out, valid):
    model = nnx.merge(self.graphdef, state)
    logits = model.logits(tokens_BxT1[:, :-1], e_in, e_out, valid)
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, tokens_BxT1[:, 1:, None], -1)[..., 0]
    return jnp.sum(nll * mask_BxT)

  def bits_per_byte(self, tokenizer, texts, seq_len, e_in, e_out, valid, bytes_N, pad_id):
    tokens, mask, n_tokens, n_bytes = rows(tokenizer, texts, seq_len, pad_id)
    pad = -len(tokens) % ROWS_PER_CALL
    tokens = np.concatenate([tokens, np.full((pad, tokens.shape[1]), pad_id, np.int32)])
    mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), np.float32)])
    e_in, e_out, valid = jnp.asarray(e_in, jnp.float32), jnp.asarray(e_out, jnp.float32), jnp.asarray(valid)
    nll = sum(float(self._fn(self.state, tokens[i:i + ROWS_PER_CALL], mask[i:i + ROWS_PER_CALL], e_in, e_out,
                             valid)) for i in range(0, len(tokens), ROWS_PER_CALL))
    predicted_bytes = float((bytes_N[tokens[:, 1:]] * mask).sum())
    return {"bits_per_byte": nll / math.log(2) / max(predicted_bytes, 1.0), "tokens_per_byte": n_tokens / n_bytes,
            "tokens": int(n_tokens), "bytes": int(n_bytes)}
