"""Length-bucketed hypernetwork encoding: each surface form runs at the shortest length that holds its pieces.

A sampled vocabulary's tokens have ~1.5 old pieces on average (docs/zett.md), so at L = 7 about 80% of the
encoder's positions are padding. Padding pieces are masked keys (softmax weight exactly 0) and only position 0 is
pooled, so a row computes the same at any length >= its piece count. Rows are sorted by the length they need and
cut into tiers of static size run at lengths 1, 2 and 4; the remaining rows run at the full L. That cuts the
encoder's positions ~3x on sampled vocabularies (measured in docs/zett.md).

The tier sizes are fixed fractions of N (shapes must be static under jit). A vocabulary that does not fit them --
more long tokens than the longer tiers hold -- takes the plain [N, L] path instead (`lax.cond`: only the taken
branch runs), so the result never depends on the tiers, only the cost does.
"""
import jax
import jax.numpy as jnp

TIERS = ((1, 8), (2, 4), (4, 2))  # (length, share of the rows in 16ths): 1/2 at L=1, 1/4 at L=2, 1/8 at L=4; rest L
SHARES = 16


def needed_lengths(pieces_NxL):
  """Length each row needs: 1 + the index of its last real piece (< 0 marks padding; position 0 always counts)."""
  L = pieces_NxL.shape[1]
  return jnp.max(jnp.where(pieces_NxL >= 0, jnp.arange(1, L + 1), 1), axis=1)


def tier_bounds(n, maxlen):
  """[(length, start, end)] over the rows sorted by needed length; the last tier runs at `maxlen`."""
  bounds, start = [], 0
  for length, share in TIERS:
    size = n * share // SHARES
    if length < maxlen and size:
      bounds.append((length, start, start + size))
      start += size
  return bounds + [(maxlen, start, n)]


def encode_by_length(encode, pieces_NxL):
  """`encode(pieces_MxK)` -> a tuple of [M, ...] arrays, computed per tier and returned in the original row order."""
  n, maxlen = pieces_NxL.shape
  bounds = tier_bounds(n, maxlen)
  if len(bounds) == 1:
    return encode(pieces_NxL)
  need_N = needed_lengths(pieces_NxL)
  order_N = jnp.argsort(need_N, stable=True)
  sorted_need_N = need_N[order_N]
  fits = jnp.all(jnp.stack([sorted_need_N[end - 1] <= length for length, _, end in bounds]))

  def tiered(pieces_NxL):
    sorted_NxL = pieces_NxL[order_N]
    parts = [encode(sorted_NxL[start:end, :length]) for length, start, end in bounds]
    inverse_N = jnp.zeros_like(order_N).at[order_N].set(jnp.arange(n, dtype=order_N.dtype))
    return tuple(jnp.concatenate(column, 0)[inverse_N] for column in zip(*parts))

  return jax.lax.cond(fits, tiered, encode, pieces_NxL)
