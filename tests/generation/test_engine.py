"""The generation engine against cache-free recomputation: full cache token for token and logits within 1e-5 over
128 new tokens (decoder, GQA, scanned, STEM), bounded caches against masked recomputation, sampling, validation."""
import numpy as np
import pytest

from gen_helpers import build, cache_schedule, cfg, prompts, reference_logits
from tessera.models import generate, kv_cache

NEW = 128


@pytest.mark.parametrize("kind", ["decoder", "gqa", "scan", "stem"])
def test_full_cache_equals_recompute(kind):
  model = build(cfg(kind))
  batch = prompts([7, 3])  # ragged: one batch, right-padded
  out = generate.generate(model, batch, NEW, return_logits=True)
  for b, prompt in enumerate(batch):
    assert len(out.tokens[b]) == NEW
    ref_TxV = reference_logits(model, prompt + out.tokens[b])[len(prompt) - 1:-1]
    np.testing.assert_allclose(out.logits_BxNxV[b], ref_TxV, atol=1e-5, rtol=0)
    assert ref_TxV.argmax(-1).tolist() == out.tokens[b]
  assert out.cache.nbytes() > 0


def test_window_larger_than_the_run_equals_full():
  model = build(cfg("gqa"))
  batch = prompts([5, 9])
  full = generate.generate(model, batch, 40, return_logits=True)
  window = generate.generate(model, batch, 40, policy=kv_cache.Policy("window", budget=48), return_logits=True)
  assert window.tokens == full.tokens
  np.testing.assert_allclose(window.logits_BxNxV, full.logits_BxNxV, atol=1e-5, rtol=0)


@pytest.mark.parametrize("policy,prompt_len", [
    (kv_cache.Policy("window", budget=12, buffer=1), 6),  # exactly the last 12 tokens at every step
    (kv_cache.Policy("window", budget=12), 6),  # default buffer 8: 12..19 tokens, evicting every 8 steps
    (kv_cache.Policy("window", budget=8, buffer=3), 17),  # the prompt alone overflows the cache
    (kv_cache.Policy("sink_window", budget=10, buffer=2, sinks=3), 5),
])
def test_bounded_cache_equals_masked_recompute(policy, prompt_len, monkeypatch):
  model = build(cfg("decoder"))
  new = 40
  (prompt,) = prompts([prompt_len], seed=1)
  out = generate.generate(model, [prompt], new, policy=policy, return_logits=True)
  buffer = policy.capacity - policy.budget
  visible = cache_schedule(prompt_len, new, policy.budget, buffer, policy.sinks)
  ref_TxV = reference_logits(model, prompt + out.tokens[0][:-1], monkeypatch, visible)[prompt_len - 1:]
  np.testing.assert_allclose(out.logits_BxNxV[0], ref_TxV, atol=1e-5, rtol=0)
  assert ref_TxV.argmax(-1).tolist() == out.tokens[0]
  positions_BxKxC, lengths_BxK = out.cache.positions(0)
  held = np.flatnonzero(visible[-1]).tolist()  # what the last step attended over
  assert (np.asarray(lengths_BxK) == len(held)).all()
  assert np.asarray(positions_BxKxC)[0, 0, :len(held)].tolist() == held


def test_sink_window_keeps_the_first_tokens_and_the_most_recent():
  model = build(cfg("gqa"))
  policy = kv_cache.Policy("sink_window", budget=16, buffer=4, sinks=4)
  out = generate.generate(model, prompts([3, 11]), 50, policy=policy)
  positions_BxKxC, lengths_BxK = (np.asarray(x) for x in out.cache.positions(1))
  for b, prompt_len in enumerate((3, 11)):
    n = int(lengths_BxK[b, 0])
    last = prompt_len + 50 - 2  # position of the last token fed
    assert positions_BxKxC[b, 0, :n].tolist() == [0, 1, 2, 3] + list(range(last - (n - 4) + 1, last + 1))


def test_ragged_batch_rows_equal_their_own_runs():
  model = build(cfg("decoder"))
  batch = prompts([4, 13, 1])
  policy = kv_cache.Policy("window", budget=10, buffer=2)
  together = generate.generate(model, batch, 24, policy=policy, return_logits=True)
  for b, prompt in enumerate(batch):
    alone = generate.generate(model, [prompt], 24, policy=policy, return_logits=True)
    assert alone.tokens[0] == together.tokens[b]
    np.testing.assert_allclose(alone.logits_BxNxV[0], together.logits_BxNxV[b], atol=1e-5, rtol=0)


def test_sampling_is_seeded_and_reduces_to_greedy():
  model = build(cfg("decoder"))
  batch = prompts([5, 5])
  greedy = generate.generate(model, batch, 16).tokens
  hot = lambda **kw: generate.generate(model, batch, 16, sampling=generate.Sampling(temperature=1.5, **kw)).tokens
  assert hot(seed=1) == hot(seed=1) != hot(seed=2)
  assert hot(seed=1) != greedy
  assert hot(top_k=1) == greedy
  assert hot(top_p=1e-6) == greedy


def test_eos_stops_a_row_and_is_not_returned():
  model = build(cfg("decoder"))
  batch = prompts([5, 6])
  free = generate.generate(model, batch, 20).tokens
  eos = free[0][3]
  out = generate.generate(model, batch, 20, sampling=generate.Sampling(eos_id=eos)).tokens
  assert out[0] == free[0][:free[0].index(eos)]
  row1 = free[1][:free[1].index(eos)] if eos in free[1] else free[1]
  assert out[1] == row1


def test_vocab_size_masks_padding_ids():
  model = build(cfg("decoder"))
  out = generate.generate(model, prompts([5]), 30, vocab_size=10, return_logits=True)
  assert max(out.tokens[0]) < 10 and np.isneginf(out.logits_BxNxV[0, :, 10:]).all()


def test_bad_settings_raise():
  with pytest.raises(ValueError, match="unknown cache policy"):
    kv_cache.Policy("lru", budget=8)
  with pytest.raises(ValueError, match="budget"):
    kv_cache.Policy("window", budget=0)
  with pytest.raises(ValueError, match="sinks"):
    kv_cache.Policy("sink_window", budget=4, sinks=4)
  with pytest.raises(ValueError, match="temperature"):
    generate.Sampling(temperature=-1.0)
  with pytest.raises(ValueError, match="at least one token"):
    generate.pad_prompts([[1], []])
  assert kv_cache.Policy("window", budget=100).capacity == 125
  assert kv_cache.Policy("window", budget=16).capacity == 24
  assert kv_cache.Policy().resolve(7, 9).capacity == 16


def test_policies_are_a_registry():
  assert {"full", "window", "sink_window"} <= set(kv_cache.names())

  @kv_cache.register("oldest_test")
  def oldest(inputs, budget):
    return kv_cache.keep_top(-inputs.positions_BxKxN, inputs, budget)

  model = build(cfg("decoder"))
  out = generate.generate(model, prompts([4]), 20, policy=kv_cache.Policy("oldest_test", budget=6, buffer=2))
  positions_BxKxC, lengths_BxK = out.cache.positions(0)
  n = int(lengths_BxK[0, 0])
  held = np.asarray(positions_BxKxC)[0, 0, :n].tolist()
  assert held[:5] == [0, 1, 2, 3, 4] and held[-1] == 4 + 20 - 2  # the newest is never evicted


def test_pallas_decode_equals_xla():
  model = build(cfg("gqa", attention_impl="pallas"))
  reference = build(cfg("gqa"))
  batch = prompts([5])
  out = generate.generate(model, batch, 4, policy=kv_cache.Policy("window", budget=4, buffer=1),
                          return_logits=True)
  ref = generate.generate(reference, batch, 4, policy=kv_cache.Policy("window", budget=4, buffer=1),
                          return_logits=True)
  assert out.tokens == ref.tokens
  np.testing.assert_allclose(out.logits_BxNxV, ref.logits_BxNxV, atol=1e-5, rtol=0)
