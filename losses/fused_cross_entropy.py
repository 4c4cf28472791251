"""Output head + next-token cross-entropy fused and chunked over tokens, with a custom VJP (`loss.fused_ce_chunk`).

Why: at a large vocabulary the head and loss are a large share of a CPU step, and most of it is memory traffic of
fp32 [B, T, V] logits: autodiff writes them, reads them for logsumexp, keeps them (or the softmax) for the
backward pass and writes their gradient. Here the unembedding matmul runs inside a scan over chunks of C tokens:
each chunk's fp32 [C, V] logits are made once and used at once for the loss *and* its gradient (softmax - onehot),
which go straight into dx [C, D] and an fp32 dW accumulator [V, D]. The backward pass only scales them by the
cotangent. Matmul FLOPs equal autodiff's (3 per token and vocabulary entry); under `jax.grad` the forward pass does
them all, a forward without grad (eval) does one. Numerics: matmul inputs in the compute dtype with fp32
accumulation (as tessera's head), fp32 softmax; tests hold it to autodiff of the plain CE within float tolerance.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np


def _chunks(x_NxD, targets_N, mask_N, chunk):
  """[K, C, ...] views of the token axis padded to K * C rows (padding: mask 0, target 0)."""
  n = x_NxD.shape[0]
  k = -(-n // chunk)
  pad = k * chunk - n
  x_KxCxD = jnp.pad(x_NxD, ((0, pad), (0, 0))).reshape(k, chunk, -1)
  targets_KxC = jnp.pad(targets_N, (0, pad)).reshape(k, chunk)
  mask_KxC = jnp.pad(mask_N.astype(jnp.float32), (0, pad)).reshape(k, chunk)
  return x_KxCxD, targets_KxC, mask_KxC


def _chunk_nll(x_CxD, w_VxD, targets_C, mask_C):
  """(masked NLL sum, fp32 logits [C, V], logsumexp [C]) of one chunk."""
  logits_CxV = jnp.einsum("cd,vd->cv", x_CxD, w_VxD, preferred_element_type=jnp.float32)
  log_z_C = jax.nn.logsumexp(logits_CxV, axis=-1)
  target_C = jnp.take_along_axis(logits_CxV, targets_C[:, None], axis=-1)[:, 0]
  return jnp.sum((log_z_C - target_C) * mask_C), logits_CxV, log_z_C


def _scan(x_NxD, w_VxD, targets_N, mask_N, chunk, grads):
  """nll sum, and with `grads` also d(nll sum)/dx [N, D] (x's dtype) and d/dW [V, D] (fp32)."""
  n = x_NxD.shape[0]
  x_KxCxD, targets_KxC, mask_KxC = _chunks(x_NxD, targets_N, mask_N, chunk)
  if not grads:
    def body(total, xs):
      x_CxD, targets_C, mask_C = xs
      return total + _chunk_nll(x_CxD, w_VxD, targets_C, mask_C)[0], None
    total, _ = jax.lax.scan(body, jnp.float32(0), (x_KxCxD, targets_KxC, mask_KxC))
    return total

  def body(carry, xs):
    total, dw_VxD = carry
    x_CxD, targets_C, mask_C = xs
    nll, logits_CxV, log_z_C = _chunk_nll(x_CxD, w_VxD, targets_C, mask_C)
    dlogits_CxV = jnp.exp(logits_CxV - log_z_C[:, None])
    dlogits_CxV = dlogits_CxV.at[jnp.arange(x_CxD.shape[0]), targets_C].add(-1.0) * mask_C[:, None]
    dlogits_CxV = dlogits_CxV.astype(x_CxD.dtype)
    dx_CxD = jnp.einsum("cv,vd->cd", dlogits_CxV, w_VxD, preferred_element_type=jnp.float32)
    dw_VxD = dw_VxD + jnp.einsum("cv,cd->vd", dlogits_CxV, x_CxD, preferred_element_type=jnp.float32)
    return (total + nll, dw_VxD), dx_CxD.astype(x_CxD.dtype)

  init = (jnp.float32(0), jnp.zeros(w_VxD.shape, jnp.float32))
  (total, dw_VxD), dx_KxCxD = jax.lax.scan(body, init, (x_KxCxD, targets_KxC, mask_KxC))
  return total, dx_KxCxD.reshape(-1, x_NxD.shape[1])[:n], dw_VxD


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def nll_sum(x_NxD, w_VxD, targets_N, mask_N, chunk):
  """sum over tokens of mask * -log softmax(x @ w.T)[target], in chunks of `chunk` tokens (fp32 result)."""
  return _scan(x_NxD, w_VxD, targets_N, mask_N, chunk, grads=False)


def _fwd(x_NxD, w_VxD, targets_N, mask_N, chunk):
  total, dx_NxD, dw_VxD = _scan(x_NxD, w_VxD, targets_N, mask_N, chunk, grads=True)
  return total, (dx_NxD, dw_VxD.astype(w_VxD.dtype), targets_N, mask_N)


def _bwd(chunk, residuals, g):
  del chunk
  dx_NxD, dw_VxD, targets_N, mask_N = residuals
  return ((g * dx_NxD).astype(dx_NxD.dtype), (g * dw_VxD).astype(dw_VxD.dtype),
          np.zeros(targets_N.shape, jax.dtypes.float0), jnp.zeros_like(mask_N))


nll_sum.defvjp(_fwd, _bwd)


def cross_entropy(x_BxTxD, w_VxD, targets_BxT, mask_BxT, chunk):
  """Masked mean token NLL of logits x @ w.T (never materialised whole) and the token count, as
  tessera.losses.next_token.cross_entropy returns them."""
  b, t, d = x_BxTxD.shape
  total = nll_sum(x_BxTxD.reshape(b * t, d), w_VxD, targets_BxT.reshape(-1), mask_BxT.reshape(-1), chunk)
  tokens = jnp.sum(mask_BxT)
  return total / jnp.maximum(tokens, 1.0), tokens
