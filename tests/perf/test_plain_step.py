"""scripts/bench_plain.py computes tessera's math: same loss and gradients from the same weights (fp32 and bf16)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import plain_helpers as ph
from tessera.losses import next_token


def batch(cfg, b=2, t=16, seed=0):
  tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (b, t + 1))
  return jnp.asarray(tokens[:, :-1], jnp.int32), jnp.asarray(tokens[:, 1:], jnp.int32)


def tessera_loss_and_grads(model, tokens_BxT, targets_BxT):
  graphdef, params = nnx.split(model, nnx.Param)
  mask_BxT = jnp.ones(tokens_BxT.shape, jnp.float32)

  def loss(params):
    logits_BxTxV = nnx.merge(graphdef, params)(tokens_BxT)
    return next_token.cross_entropy(logits_BxTxV, targets_BxT, mask_BxT)[0]
  loss, grads = jax.jit(jax.value_and_grad(loss))(nnx.to_pure_dict(params))
  return loss, grads


@pytest.mark.parametrize("dtype,rtol,atol", [("float32", 1e-5, 1e-6), ("bfloat16", 2e-2, 2e-3)])
def test_plain_step_matches_tessera_gelu_decoder(dtype, rtol, atol):
  cfg = ph.gelu_cfg(dtype=dtype)
  model = ph.tessera_model(cfg)
  tokens_BxT, targets_BxT = batch(cfg)
  loss, grads = tessera_loss_and_grads(model, tokens_BxT, targets_BxT)
  plain_loss, plain_grads = ph.plain_loss_and_grads(cfg, ph.plain_params(model), tokens_BxT, targets_BxT)
  np.testing.assert_allclose(plain_loss, loss, rtol=rtol)
  want = ph.tessera_tree_as_plain(grads)
  assert jax.tree.structure(want) == jax.tree.structure(plain_grads)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * scale), plain_grads, want)


def test_plain_trainer_steps_and_learns():
  trainer = ph.bench_plain.PlainTrainer(vocab=64, d=32, n_layers=1, heads=2, d_ff=64, seq_len=8, batch=2)
  first = float(ph.bench_plain.loss_fn(trainer.graphdef, trainer.params, trainer.inputs, trainer.targets))
  assert trainer.run(20) > 0
  last = float(ph.bench_plain.loss_fn(trainer.graphdef, trainer.params, trainer.inputs, trainer.targets))
  assert last < first
