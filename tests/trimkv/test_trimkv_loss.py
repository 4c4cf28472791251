"""The gate objective (losses/trimkv.py, spec §5) and check 4's gradient checks in process."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from tessera.losses import registry as loss_registry
from tessera.losses import trimkv as trimkv_loss
from trimkv_helpers import build, set_gate_bias, tiny_cfg, tokens


def loss_config(**overrides):
  c = ml_collections.ConfigDict(dict(model=dict(name="trimkv"), loss=dict(name="trimkv", trimkv=dict(
      memory_size=4, retention_weight=1.0, ntp_weight=1.0, capacity_norm="t"))))
  c.loss.trimkv.update(overrides)
  return c


def batch(B=2, T=16):
  tok = tokens((B, T + 1), seed=3)
  mask = jnp.ones((B, T), jnp.float32).at[1, -3:].set(0.0)
  return {"inputs": tok[:, :-1], "targets": tok[:, 1:], "loss_mask": mask,
          "segment_ids": jnp.zeros((B, T), jnp.int32), "positions": jnp.broadcast_to(jnp.arange(T), (B, T))}


def test_forward_kl_matches_numpy_and_is_zero_on_equal_logits():
  rng = np.random.default_rng(0)
  t, s = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
  mask = np.array([[1, 1, 0], [1, 0, 1]], np.float32)
  pt = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
  ps = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
  want = ((pt * (np.log(pt) - np.log(ps))).sum(-1) * mask).sum() / mask.sum()
  np.testing.assert_allclose(trimkv_loss.forward_kl(jnp.asarray(t), jnp.asarray(s), jnp.asarray(mask)), want,
                             rtol=1e-5)
  assert float(trimkv_loss.forward_kl(jnp.asarray(t), jnp.asarray(t), jnp.asarray(mask))) == 0.0


def test_capacity_loss_normalisations():
  """max(0, S - M) / (t + 1) | / M | / 1, averaged over (layer, head, row, valid t)."""
  S = jnp.broadcast_to(jnp.arange(1.0, 9.0), (1, 1, 1, 8))  # S_t = t + 1 (no decay)
  pos, mask = jnp.arange(8)[None], jnp.ones((1, 8))
  excess = np.maximum(np.arange(1.0, 9.0) - 4, 0)
  np.testing.assert_allclose(trimkv_loss.capacity_loss(S, pos, mask, 4, "t"), np.mean(excess / np.arange(1, 9)))
  np.testing.assert_allclose(trimkv_loss.capacity_loss(S, pos, mask, 4, "M"), np.mean(excess / 4))
  np.testing.assert_allclose(trimkv_loss.capacity_loss(S, pos, mask, 4, "none"), np.mean(excess))
  half = mask.at[0, 4:].set(0.0)
  assert float(trimkv_loss.capacity_loss(S, pos, half, 4, "none")) == 0.0


def test_objective_terms_and_gradient_isolation():
  """Check 4 (in process; the CLI test checks the frozen weights): loss = KL + CE + capacity; every gate
  gradient is finite and non-zero, and the KL alone reaches layer 0's gate (through layer 1's computation)."""
  model = set_gate_bias(build(tiny_cfg()), 2.0)  # beta ~ 0.88: retention is non-trivial
  objective = loss_registry.get("trimkv")(loss_config())
  b = batch()
  graphdef, gates, rest = nnx.split(model, lambda path, _: "retention_gate" in path, ...)

  def loss(gates, which):
    value, metrics = objective.loss_fn(nnx.merge(graphdef, gates, rest), b, None)
    return value if which == "loss" else metrics[which]

  (value, metrics), grads = jax.jit(jax.value_and_grad(
      lambda g: objective.loss_fn(nnx.merge(graphdef, g, rest), b, None), has_aux=True))(gates)
  np.testing.assert_allclose(value, metrics["kl"] + metrics["ce"] + metrics["capacity"], rtol=1e-6)
  assert float(metrics["kl"]) > 0 and float(metrics["capacity"]) > 0
  flat = dict(nnx.to_flat_state(grads))
  assert len(flat) == 8
  for path, g in flat.items():
    assert bool(jnp.all(jnp.isfinite(g[...]))) and float(jnp.max(jnp.abs(g[...]))) > 0, path
  kl_grads = dict(nnx.to_flat_state(jax.jit(jax.grad(lambda g: loss(g, "kl")))(gates)))
  w1_layer0 = kl_grads[("blocks", 0, "retention_gate", "w1")][...]
  assert float(jnp.max(jnp.abs(w1_layer0))) > 0


def test_key_checks_name_the_key():
  check = trimkv_loss._check
  for key, value, words in (("capacity_norm", "T", "capacity_norm"), ("memory_size", 0, "memory_size"),
                            ("ntp_weight", -1.0, "ntp_weight")):
    try:
      check(loss_config(**{key: value}))
    except ValueError as e:
      assert str(e).startswith(f"config key 'loss.trimkv.{words}'"), e
    else:
      raise AssertionError(f"{key}={value!r} accepted")
  c = loss_config()
  c.model.name = "decoder"
  try:
    check(c)
  except ValueError as e:
    assert str(e).startswith("config key 'model.name'")
