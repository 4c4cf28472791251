"""The comparison point for `scripts/bench --shapes`: a plain JAX/Flax LM train step, written as a plain trainer
(nanodo, a tutorial) writes it, at exactly the math of tessera's decoder with `model.mlp="gelu"`,
`tie_embeddings=True` and `n_kv_heads = n_heads`.

Its own small GPT in Flax NNX (nothing from tessera): pre-norm RMSNorm (fp32 statistics), fused QKV, RoPE, causal
softmax attention with fp32 logits, a two-matrix GELU MLP, tied embeddings with fp32 logits; optax's integer-label
cross-entropy; optax.adamw (+ global-norm clipping, decay on matrices only: tessera's defaults) over a pure params
pytree; one `jax.jit` step with `donate_argnums`. Params are fp32; `dtype` is the compute dtype (as tessera's
`model.dtype`). Random tokens: throughput does not depend on the data.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


class RMSNorm(nnx.Module):
  def __init__(self, d, dtype, eps=1e-6):
    self.scale, self.dtype, self.eps = nnx.Param(jnp.ones((d,))), dtype, eps

  def __call__(self, x):
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * self.scale[...]).astype(self.dtype)


def rope(x_BxTxHxE, theta):
  half = x_BxTxHxE.shape[-1] // 2
  inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = (jnp.arange(x_BxTxHxE.shape[1], dtype=jnp.float32)[:, None] * inv_freq)[None, :, None, :]
  x1, x2 = jnp.split(x_BxTxHxE.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * jnp.cos(angle) - x2 * jnp.sin(angle), x2 * jnp.cos(angle) + x1 * jnp.sin(angle)], -1)
  return out.astype(x_BxTxHxE.dtype)


class Block(nnx.Module):
  def __init__(self, d, heads, d_ff, n_layers, dtype, rngs, theta=10000.0, std=0.02):
    e = d // heads
    init, out_init = nnx.initializers.normal(std), nnx.initializers.normal(std / (2 * n_layers) ** 0.5)
    self.dtype, self.theta = dtype, theta
    self.norm1, self.norm2 = RMSNorm(d, dtype), RMSNorm(d, dtype)
    self.qkv = nnx.Param(init(rngs.params(), (d, 3, heads, e)))
    self.o = nnx.Param(out_init(rngs.params(), (heads, e, d)))
    self.up = nnx.Param(init(rngs.params(), (d, d_ff)))
    self.down = nnx.Param(out_init(rngs.params(), (d_ff, d)))

  def w(self, p):
    return p[...].astype(self.dtype)

  def attention(self, h_BxTxD):
    qkv = jnp.einsum("btd,dshe->sbthe", h_BxTxD, self.w(self.qkv))
    q, k, v = rope(qkv[0], self.theta), rope(qkv[1], self.theta), qkv[2]
    T = h_BxTxD.shape[1]
    logits = jnp.einsum("bthe,bshe->bhts", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    logits = jnp.where(jnp.tril(jnp.ones((T, T), bool)), logits, -1e30)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    return jnp.einsum("bthe,hed->btd", jnp.einsum("bhts,bshe->bthe", probs, v), self.w(self.o))

  def mlp(self, h_BxTxD):
    return jax.nn.gelu(h_BxTxD @ self.w(self.up), approximate=True) @ self.w(self.down)

  def __call__(self, x_BxTxD):
    x_BxTxD = x_BxTxD + self.attention(self.norm1(x_BxTxD))
    return x_BxTxD + self.mlp(self.norm2(x_BxTxD))


class GPT(nnx.Module):
  def __init__(self, vocab, d, n_layers, heads, d_ff, dtype, rngs):
    self.dtype = dtype
    self.embed = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (vocab, d)))
    self.blocks = nnx.List([Block(d, heads, d_ff, n_layers, dtype, rngs) for _ in range(n_layers)])
    self.norm = RMSNorm(d, dtype)

  def __call__(self, tokens_BxT):
    x_BxTxD = self.embed[...][tokens_BxT].astype(self.dtype)
    for block in self.blocks:
      x_BxTxD = block(x_BxTxD)
    return self.logits(self.norm(x_BxTxD))

  def logits(self, x_BxTxD):
    return jnp.einsum("btd,vd->btv", x_BxTxD, self.embed[...].astype(self.dtype), preferred_element_type=jnp.float32)


def optimizer(lr=3e-3, steps=100, warmup=5, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip=1.0):
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, end_value=lr * 0.1)
  return optax.chain(optax.clip_by_global_norm(clip),
                     optax.adamw(schedule, b1, b2, eps, weight_decay, mask=lambda p: jax.tree.map(
                         lambda x: x.ndim >= 2, p)))


def loss_fn(graphdef, params, tokens_BxT, targets_BxT):
  logits_BxTxV = nnx.merge(graphdef, params)(tokens_BxT)
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT).mean()


class PlainTrainer:
  """Init once; `run(steps)` advances the same state and returns seconds per step (blocking once at the end)."""

  def __init__(self, vocab, d, n_layers, heads, d_ff, seq_len, batch, dtype="float32", seed=0):
    model = GPT(vocab, d, n_layers, heads, d_ff, jnp.dtype(dtype), nnx.Rngs(seed))
    self.graphdef, self.params = nnx.split(model, nnx.Param)
    self.params = jax.tree.map(jnp.asarray, nnx.to_pure_dict(self.params))
    tx = optimizer()
    self.opt_state = tx.init(self.params)

    def train_step(params, opt_state, tokens_BxT, targets_BxT):
      loss, grads = jax.value_and_grad(lambda p: loss_fn(self.graphdef, p, tokens_BxT, targets_BxT))(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    self.step = jax.jit(train_step, donate_argnums=(0, 1))
    tokens = np.random.default_rng(seed).integers(0, vocab, (batch, seq_len + 1))
    self.inputs, self.targets = jnp.asarray(tokens[:, :-1], jnp.int32), jnp.asarray(tokens[:, 1:], jnp.int32)
    self.run(1)  # compile

  def run(self, steps):
    start = time.perf_counter()
    for _ in range(steps):
      self.params, self.opt_state, loss = self.step(self.params, self.opt_state, self.inputs, self.targets)
    loss.block_until_ready()
    return (time.perf_counter() - start) / steps
