"""The h2o and random cache policies (models/kv_cache.py, issue 12) and the per-token score contract."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tessera.models import generate, kv_cache
from trimkv_helpers import build, tiny_cfg


def inputs(scores_N, seed=0):
  N = len(scores_N)
  return kv_cache.PolicyInputs(jnp.arange(N, dtype=jnp.int32)[None, None], jnp.ones((1, 1, N), bool),
                               jnp.asarray(scores_N, jnp.float32)[None, None], 0, jax.random.key(seed))


def kept(fn, scores_N, budget, seed=0):
  return sorted(np.asarray(fn(inputs(scores_N, seed), budget))[0, 0].tolist())


def test_h2o_keeps_heavy_hitters_and_the_recent_half():
  scores = np.zeros(20)
  scores[[2, 7, 11, 18]] = [5.0, 9.0, 1.0, 100.0]  # 18 is recent anyway: the heavy half is 7, 2 (then 11)
  assert kept(kv_cache.h2o, scores, 6) == [2, 7, 11, 17, 18, 19]
  assert kept(kv_cache.h2o, scores, 5) == [2, 7, 17, 18, 19]


def test_random_is_seeded_and_keeps_the_newest():
  a, b = kept(kv_cache.random_eviction, np.zeros(40), 8, 0), kept(kv_cache.random_eviction, np.zeros(40), 8, 1)
  assert a == kept(kv_cache.random_eviction, np.zeros(40), 8, 0) and a != b
  assert 39 in a and 39 in b and len(set(a)) == 8


def test_attention_mass_sums_to_queries_per_head():
  rng = np.random.default_rng(0)
  B, T, H, K, E = 2, 5, 4, 2, 8
  q = jnp.asarray(rng.standard_normal((B, T, H, E)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((B, T, K, E)), jnp.float32)
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  mass = kv_cache.attention_mass(q, k, pos, jnp.broadcast_to(pos[:, None], (B, K, T)), jnp.ones((B, K, T), bool))
  np.testing.assert_allclose(mass.sum(-1), np.full((B, K), T * H // K), rtol=1e-5)
  assert float(mass[0, 0, -1]) < float(mass[0, 0, 0])  # the first key is seen by every query


@pytest.mark.parametrize("name", ["h2o", "random"])
def test_bounded_generation_and_large_budget_equals_full(name):
  model = build(tiny_cfg(name="decoder"), name="decoder")
  prompts = [list(range(1, 20)), list(range(5, 12))]
  full = generate.generate(model, prompts, 10, return_logits=True)
  same = generate.generate(model, prompts, 10, policy=kv_cache.Policy(name, budget=40, buffer=4), return_logits=True)
  assert same.tokens == full.tokens
  np.testing.assert_allclose(same.logits_BxNxV, full.logits_BxNxV, rtol=1e-5, atol=1e-5)
  small = generate.generate(model, prompts, 10, policy=kv_cache.Policy(name, budget=6, buffer=2))
  _, lengths = small.cache.positions(0)
  assert 6 <= int(lengths.min()) and int(lengths.max()) <= 8
  if name == "h2o":  # scores accumulate attention: positive on every live slot
    layer = small.cache.layers[0]
    live = np.asarray(layer.live_BxKxC())
    assert (np.asarray(layer.scores_BxKxC)[live] > 0).all()


def test_token_policy_needs_a_model_that_writes_scores():
  decoder = build(tiny_cfg(name="decoder"), name="decoder")
  with pytest.raises(ValueError, match="--kv-policy trimkv: .* writes no per-token cache scores"):
    kv_cache.check_model(kv_cache.Policy("trimkv", budget=8), decoder)
  kv_cache.check_model(kv_cache.Policy("trimkv", budget=8), build(tiny_cfg()))
  with pytest.raises(ValueError, match="needs per-token scores"):
    generate.generate(decoder, [[1, 2, 3]], 2, policy=kv_cache.Policy("trimkv", budget=8))
