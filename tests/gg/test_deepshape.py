"""DeepShape histogram specification: gg_prior.md §6 and acceptance check 5."""
import math

import numpy as np
import pytest

from tessera.models import deepshape, gg_shape

DELTA = 2.0 ** -13


@pytest.fixture(scope="module")
def remapped():
  rng = np.random.default_rng(0)
  nu = 1.2
  alpha = 0.05 * math.sqrt(math.gamma(1 / nu) / math.gamma(3 / nu))  # std 0.05
  w = (alpha * rng.gamma(1 / nu, size=1_000_000) ** (1 / nu) * rng.choice([-1.0, 1.0], 1_000_000))
  w = w.astype(np.float32)
  new, info = deepshape.deepshape(w, adj_minnum=100)
  k = np.rint(w / DELTA)
  in_range = np.abs(k - round(info["centre"] / DELTA)) <= round(info["half_width"] / DELTA)
  return w, new, info, in_range


def test_remap_is_monotone_except_leftover(remapped):
  w, new, info, in_range = remapped
  cells = 2 * round(info["half_width"] / DELTA) + 1
  assert 0 < info["leftover"] < cells and info["n_in"] == in_range.sum()
  order = np.argsort(w[in_range], kind="stable")
  assigned = new[in_range][order][: info["n_in"] - info["leftover"]]
  assert np.all(np.diff(assigned) >= 0)
  leftover = order[info["n_in"] - info["leftover"]:]
  np.testing.assert_array_equal(new[in_range][leftover], np.rint(w[in_range][leftover] / DELTA) * DELTA)


def test_tails_keep_their_quantised_value(remapped):
  w, new, _, in_range = remapped
  assert (~in_range).sum() > 0
  np.testing.assert_array_equal(new[~in_range], (np.rint(w[~in_range] / DELTA) * DELTA).astype(np.float32))


def test_histogram_matches_target_counts_up_to_leftover(remapped):
  _, new, info, in_range = remapped
  centre, half = round(info["centre"] / DELTA), round(info["half_width"] / DELTA)
  cells = np.arange(centre - half, centre + half + 1)
  log_p = -np.abs((cells * DELTA - info["mu"]) / info["beta_target"]) ** info["nu_target"]
  p = np.exp(log_p - log_p.max())
  target = np.floor(info["n_in"] * p / p.sum())
  counts = np.bincount(np.rint(new[in_range] / DELTA).astype(np.int64) - cells[0], minlength=cells.size)
  excess = counts - target
  assert np.all(excess >= 0) and excess.sum() == info["leftover"]


def test_shape_and_scale_shrink_and_entropy_drops(remapped):
  w, new, info, in_range = remapped
  _, nu_after, beta_after = deepshape.fit_gg(new[in_range])
  assert 1.6 < info["nu"] < 1.9  # the tail cut makes the in-range part look less peaked than ν₀ = 1.2
  assert nu_after / info["nu"] == pytest.approx(0.8, rel=0.1)
  assert beta_after / info["beta"] == pytest.approx(0.6, rel=0.1)
  assert gg_shape.weight_entropy_bits(new) < gg_shape.weight_entropy_bits(w) - 0.3


def test_tree_version_keeps_shapes_and_dtypes():
  rng = np.random.default_rng(1)
  params = {"kernel": (0.05 * rng.standard_normal((200, 100))).astype(np.float32),
            "bias": (0.01 * rng.standard_normal(50)).astype(np.float16)}
  new, info = deepshape.deepshape_tree(params)
  assert info["adj_minnum"] == deepshape.default_adj_minnum(20_050) == 10
  assert new["kernel"].shape == (200, 100) and new["kernel"].dtype == np.float32
  assert new["bias"].shape == (50,) and new["bias"].dtype == np.float16
  flat, _ = deepshape.deepshape(np.concatenate([params["kernel"].ravel(), params["bias"].astype(np.float32)]),
                                adj_minnum=10)
  np.testing.assert_array_equal(new["kernel"].ravel(), flat[:20_000])
