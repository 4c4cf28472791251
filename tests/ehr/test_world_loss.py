"""jepa_ehr.md acceptance checks 4 (no leakage into z_ctx), 5 (EMA exactness, no gradient, no optimizer state) and
6 (λ = 0 equals SFT-only gradients, curriculum switch, predictor gets gradients only from L_JEPA), on a tiny
ehr_world built by the trainer's own StateFactory and train step (no data: random token windows)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tessera.configs import ehr_jepa
from tessera.data import ehr_cuts
from tessera.losses import ehr_jepa as loss_lib
from tessera.losses import next_token
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import state as state_lib
from tessera.trainer import step as step_lib

CTX, FUT, B, V = 12, 4, 4, 128


def config(**jepa):
  c = ehr_jepa.build("tiny")
  c.model.update(dict(vocab_size=V, d_model=32, d_ff=64, n_heads=2, n_kv_heads=1))
  c.data.update(dict(ctx_len=CTX, fut_len=FUT))
  c.train.update(dict(seq_len=CTX + FUT, batch_size=B, steps=10))
  c.loss.jepa.update(jepa)
  return c


def batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, V, (B, CTX + FUT)).astype(np.int32)
  cut = np.asarray([CTX - 1, CTX - 3, 5, CTX - 1], np.int32)
  last = np.asarray([CTX + FUT - 1, CTX + 1, 9, CTX + FUT - 2], np.int32)
  return ehr_cuts.row_fields(list(zip(tokens, cut, last)), 0, FUT)


@pytest.fixture(scope="module")
def factory():
  c = config()
  return state_lib.StateFactory(c, mesh_lib.make_mesh(c))


def grads_of(fac, state, loss_fn, b):
  def f(params):
    return loss_fn(fac.model(params, state["frozen"], state["model_state"]), b, jax.random.key(0))
  with fac.context():
    return jax.jit(jax.grad(lambda p: f(p)[0]))(state["params"])


def test_target_starts_as_the_online_copy_and_is_not_optimised(factory):
  state = factory.init(0)
  target = state["model_state"]["target"]
  online = {k: v for k, v in state["params"].items() if k in loss_lib.BACKBONE}
  jax.tree.map(np.testing.assert_array_equal, target, online)
  assert "target" not in state["params"] and "target" not in state["frozen"]
  opt_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state["opt_state"])]
  assert opt_paths and not [p for p in opt_paths if "target" in p]


def test_one_step_moves_the_target_by_the_exact_ema(factory):
  state = factory.init(0)
  old_target = jax.device_get(state["model_state"]["target"])
  with factory.context():
    new_state, metrics = step_lib.make_train_step(factory)(state, batch())
  new_online = jax.device_get({k: v for k, v in new_state["params"].items() if k in loss_lib.BACKBONE})
  m = np.float32(jax.device_get(metrics["ema_momentum"]))
  assert m == np.float32(0.996)  # step 0 of 10: the schedule's start
  # XLA fuses ξ·m + (1−m)·θ into one fused multiply-add: round((1−m)·θ) first, then m·ξ + that, rounded once.
  fma = lambda t, o: (np.float64(m) * t + ((np.float32(1) - m) * o).astype(np.float64)).astype(np.float32)
  expected = jax.tree.map(fma, old_target, new_online)
  got = jax.device_get(new_state["model_state"]["target"])
  for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_array_equal(g, e)  # fp32, bit for bit
  assert int(new_state["model_state"]["updates"]) == 1
  assert float(metrics["jepa_loss"]) > 0 and float(metrics["z_hat_std_mean"]) > 0


def test_target_receives_no_gradient(factory):
  state = factory.init(0)
  loss_fn = loss_lib.make_loss_fn(factory.config)

  def of_target(model_state):
    return loss_fn(factory.model(state["params"], state["frozen"], model_state), batch(), None)[0]
  with factory.context():
    g = jax.jit(jax.grad(of_target, allow_int=True))(state["model_state"])
  for leaf in jax.tree.leaves(g["target"]):
    assert not np.any(np.asarray(leaf))


def test_weight_zero_and_curriculum_phase_one_give_exactly_sft_gradients(factory):
  state = factory.init(0)
  b = batch()

  def sft_only(model, b, rng):
    _, logits = model.hidden(b["inputs"], b["positions"])
    return next_token.cross_entropy(logits, b["targets"], b["loss_mask"])[0], {}
  reference = grads_of(factory, state, sft_only, b)
  for jepa in (dict(weight=0.0), dict(schedule="curriculum", curriculum_fraction=0.5)):
    got = grads_of(factory, state, loss_lib.make_loss_fn(config(**jepa)), b)
    jax.tree.map(np.testing.assert_array_equal, got, reference)
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(got["predictor"]))
  for target in ("ctx_fut_last", "fut_only_last"):
    joint = grads_of(factory, state, loss_lib.make_loss_fn(config(target=target)), b)
    assert all(np.any(np.asarray(x)) for x in jax.tree.leaves(joint["predictor"]))  # only L_JEPA reaches g_φ


def test_curriculum_switches_at_the_configured_step():
  c = config(schedule="curriculum", curriculum_fraction=0.3)
  weights = [float(loss_lib.jepa_weight(c.loss.jepa, c.train.steps, jnp.int32(k))) for k in range(10)]
  assert weights == [0.0] * 3 + [1.0] * 7
  assert float(loss_lib.jepa_weight(config().loss.jepa, 10, jnp.int32(0))) == 1.0


def test_future_tokens_never_reach_z_ctx(factory):
  state = factory.init(0)
  b = batch()
  with factory.context():
    @jax.jit
    def z_ctx(tokens):
      model = factory.model(state["params"], state["frozen"], state["model_state"])
      h, _ = model.hidden(tokens, b["positions"])
      return loss_lib.gather_rows(h, b["cut_idx"])
    base = np.asarray(z_ctx(b["inputs"]))
    rng = np.random.default_rng(1)
    for _ in range(3):
      perturbed = b["inputs"].copy()
      for row, cut in enumerate(b["cut_idx"]):
        perturbed[row, cut + 1:] = rng.integers(4, V, CTX + FUT - cut - 1)
      np.testing.assert_array_equal(np.asarray(z_ctx(perturbed)), base)


def test_bad_jepa_keys_are_one_line_errors():
  for key, value, message in (("schedule", "alternate", "loss.jepa.schedule"), ("weight", -1.0, "loss.jepa.weight"),
                              ("loss", "huber", "loss.jepa.loss")):
    c = config(**{key: value})
    with pytest.raises(ValueError, match=message):
      loss_lib.check(c)
  c = config()
  c.train.seq_len = 99
  with pytest.raises(ValueError, match="train.seq_len"):
    loss_lib.check(c)
