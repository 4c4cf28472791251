"""The TRIM-KV cache policy (models/trimkv_cache.py): spec check 6, eviction reductions and cache invariants."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tessera.models import generate, kv_cache, trimkv_cache
from trimkv_helpers import build, set_gate_bias, tiny_cfg


def policy_inputs(log_beta_N, live_N=None):
  N = log_beta_N.shape[0]
  live = np.ones(N, bool) if live_N is None else live_N
  return kv_cache.PolicyInputs(jnp.arange(N, dtype=jnp.int32)[None, None], jnp.asarray(live)[None, None],
                               jnp.asarray(log_beta_N, jnp.float32)[None, None], 0, jax.random.key(0))


def kept(log_beta_N, budget, live_N=None):
  return sorted(np.asarray(trimkv_cache.trimkv(policy_inputs(log_beta_N, live_N), budget))[0, 0].tolist())


def test_constant_beta_is_a_sliding_window():
  assert kept(np.full(20, np.log(0.9)), 6) == list(range(14, 20))
  live = np.ones(20, bool)
  live[[15, 17]] = False  # dead slots are never kept over live ones
  assert kept(np.full(20, np.log(0.5)), 6, live) == [12, 13, 14, 16, 18, 19]


def test_beta_one_at_token_zero_is_streaming_llm():
  log_beta = np.full(20, np.log(0.9))
  log_beta[0] = 0.0
  assert kept(log_beta, 6) == [0, 15, 16, 17, 18, 19]


def test_newest_token_is_never_evicted():
  log_beta = np.zeros(20)
  log_beta[-1] = -50.0  # the newest token has the worst score, still kept
  assert 19 in kept(log_beta, 4)


def test_append_evicts_at_m_plus_buffer_back_to_m_by_score():
  """Length grows to M + buffer, drops to M; live entries stay sorted by position; the kept set is the top M of
  (t_now - pos) log beta with t_now = newest + 2 (the newest always kept); scores are the tokens' log beta."""
  M, buffer, B, K = 5, 3, 1, 2
  policy = kv_cache.Policy("trimkv", budget=M, buffer=buffer)
  cache = kv_cache.init(policy, B, 1, K, 4, jnp.float32).layers[0]
  rng = np.random.default_rng(0)
  log_beta_TxK = -rng.uniform(0, 0.5, (30, K)).astype(np.float32)
  step = jax.jit(kv_cache.append_one)
  held = [set() for _ in range(K)]
  lengths = []
  for t in range(30):
    kv = jnp.asarray(rng.standard_normal((B, 1, K, 4)), jnp.float32)
    cache = step(cache, kv, kv, jnp.full((B, 1), t, jnp.int32), jnp.ones((B, 1), bool),
                 jnp.asarray(log_beta_TxK[t])[None, :, None])
    for k in range(K):
      held[k].add(t)
      if len(held[k]) == M + buffer:  # the reference eviction
        score = {i: (t + 2 - i) * log_beta_TxK[i, k] for i in held[k] if i != t}
        held[k] = set(sorted(score, key=score.get)[-(M - 1):]) | {t}
      n = int(cache.lengths_BxK[0, k])
      pos = np.asarray(cache.positions_BxKxC[0, k, :n])
      assert set(pos.tolist()) == held[k] and np.all(np.diff(pos) > 0), (t, k)
      np.testing.assert_array_equal(cache.scores_BxKxC[0, k, :n], log_beta_TxK[pos, k])
    lengths.append(int(cache.lengths_BxK[0, 0]))
  assert max(lengths) < M + buffer and lengths[M + buffer - 1] == M and min(lengths[M + buffer - 1:]) == M


@pytest.mark.parametrize("scan_layers", [False, True])
def test_budget_at_least_the_sequence_is_the_full_cache(scan_layers):
  """M >= prompt + new tokens: TRIM-KV never evicts and generates exactly what the full cache does (tokens
  and logits), which is the plain decoder's (beta is never applied at inference)."""
  model = set_gate_bias(build(tiny_cfg(scan_layers=scan_layers)), 1.0)
  prompts = [list(range(1, 20)), list(range(5, 12))]
  full = generate.generate(model, prompts, 10, policy=kv_cache.Policy(), return_logits=True)
  bounded = generate.generate(model, prompts, 10, policy=kv_cache.Policy("trimkv", budget=32, buffer=4),
                              return_logits=True)
  assert bounded.tokens == full.tokens
  np.testing.assert_allclose(bounded.logits_BxNxV, full.logits_BxNxV, rtol=1e-5, atol=1e-5)
  small = generate.generate(model, prompts, 10, policy=kv_cache.Policy("trimkv", budget=6, buffer=2))
  positions, lengths = small.cache.positions(0)
  assert int(lengths.max()) <= 8 and int(lengths.min()) >= 6
