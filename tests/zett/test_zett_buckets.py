"""Length-bucketed hypernetwork encoding (models/zett_buckets.py): the same embeddings and gradients as the plain
[N, L] path, whether the vocabulary fits the tiers or falls back."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tessera.models import zett_buckets
from zett_helpers import tiny_model

N, L = 256, 7


def surfaces(piece_counts, seed=0):
  """[N, L] surface forms with the given piece counts (pieces >= 0, padding -1), rows shuffled."""
  rng = np.random.default_rng(seed)
  counts = rng.permutation(np.asarray(piece_counts))
  pieces = rng.integers(0, 300, (len(counts), L))
  return jnp.asarray(np.where(np.arange(L) < counts[:, None], pieces, -1), jnp.int32)


# a sampled vocabulary's histogram (docs/zett.md: 1292/568/147/23/5/3/11 of 2049 for 1..7 pieces), scaled to 256
TYPICAL = [1] * 170 + [2] * 63 + [3] * 16 + [4] * 3 + [5] * 1 + [6] * 1 + [7] * 2
ALL_LONG = [7] * 200 + [1] * 56  # more long tokens than the L=7 tier's 32 rows: the plain path runs


def embeddings(model, surface_NxL, bucketed):
  in_scale, in_shift, *_ = model.rescalers()
  if bucketed:
    return model._raw(surface_NxL, in_scale, in_shift)
  table = jnp.concatenate([model.source() * in_scale + in_shift, model.fallback[...]], 0)
  mask_NxL = (surface_NxL >= 0).at[:, 0].set(True)
  return model.hypernet(jnp.take(table, jnp.maximum(surface_NxL, 0), axis=0), mask_NxL)


def loss_and_grads(model, surface_NxL, bucketed):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params):
    e_in, e_out = embeddings(nnx.merge(graphdef, params, rest), surface_NxL, bucketed)
    return jnp.sum(jnp.square(e_in)) + jnp.sum(e_out * jnp.arange(e_out.shape[1]))

  return jax.jit(jax.value_and_grad(loss))(params)


def test_tiers_cover_every_row_once():
  bounds = zett_buckets.tier_bounds(2176, 7)
  assert [b[0] for b in bounds] == [1, 2, 4, 7]
  assert bounds[0][1] == 0 and bounds[-1][2] == 2176
  assert all(a[2] == b[1] for a, b in zip(bounds, bounds[1:]))
  positions = sum(length * (end - start) for length, start, end in bounds)
  assert positions < 2176 * 7 / 2.5  # the point of it: ~3x fewer encoder positions
  assert zett_buckets.tier_bounds(8, 1) == [(1, 0, 8)]


def test_needed_length_is_one_past_the_last_real_piece():
  pieces = jnp.asarray([[5, -1, -1], [5, 6, -1], [-1, -1, -1], [5, 6, 7]])
  np.testing.assert_array_equal(zett_buckets.needed_lengths(pieces), [1, 2, 1, 3])


def test_bucketed_embeddings_and_gradients_equal_the_plain_path():
  model = tiny_model()
  for counts in (TYPICAL, ALL_LONG):
    surface_NxL = surfaces(counts)
    loss_b, grads_b = loss_and_grads(model, surface_NxL, bucketed=True)
    loss_p, grads_p = loss_and_grads(model, surface_NxL, bucketed=False)
    np.testing.assert_allclose(loss_b, loss_p, rtol=1e-5)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_p))
    for g_b, g_p in zip(jax.tree.leaves(grads_b), jax.tree.leaves(grads_p)):
      # sums over differently shaped matmuls: equal up to fp32 reassociation, relative to the gradients' scale
      np.testing.assert_allclose(g_b, g_p, rtol=1e-4, atol=1e-6 * scale)
