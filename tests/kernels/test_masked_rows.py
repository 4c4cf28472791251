"""Query rows fully masked inside visited blocks (issue 17): keep-evicted leading keys, causal and with packed
segments. Pallas in interpret mode on CPU, compiled on GPU (the bench_gpu.sh test step)."""

import jax.numpy as jnp
import numpy as np
import pytest

from tessera.models import kernels

from test_attention_kernel import BLOCKS_16, Case, check_close, make_inputs, value_and_grads


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layout", ["causal", "segments"])
def test_rows_fully_masked_inside_visited_blocks(layout, dtype):
  """Keep-evicted leading keys: query rows 0-2 (causal) or 10-12 (the second document's first rows) see no key,
  while later rows of the same 16-row block keep the block visited. Those rows must give exactly 0, and evicted
  keys exactly zero gradients (a kernel that stopped zeroing masked probabilities returns |o| ~ 0.6 there)."""
  case = Case(dtype, B=2, T=32, S=32, H=4, K=2, retention="mul_logit")
  (q, k, v, log_beta), _, cotangent = make_inputs(case)
  first = 0 if layout == "causal" else 10
  kwargs = dict(keep=jnp.ones((2, 32), jnp.int8).at[:, first:first + 3].set(0))
  if layout == "segments":
    seg = (jnp.arange(32) >= first).astype(jnp.int32)
    pos = jnp.where(seg == 1, jnp.arange(32) - first, jnp.arange(32)).astype(jnp.int32)
    kwargs.update(segment_ids=jnp.broadcast_to(seg, (2, 32)), q_positions=jnp.broadcast_to(pos, (2, 32)),
                  kv_positions=jnp.broadcast_to(pos, (2, 32)))
  fn = lambda *a, **kw: kernels.attention(*a, implementation="pallas", block_sizes=BLOCKS_16, **kw)
  ours = value_and_grads(fn, (q, k, v, log_beta), kwargs, cotangent, True)
  o, (dq, dk, dv, dlb) = ours
  masked = slice(first, first + 3)
  for name, x in (("o", o[:, masked]), ("dq", dq[:, masked]), ("dk", dk[:, masked]), ("dv", dv[:, masked]),
                  ("d log_beta", dlb[:, :, masked])):
    np.testing.assert_array_equal(np.asarray(x, np.float32), 0.0, err_msg=name)
  ref = lambda q, k, v, **kw: kernels.attention_reference(q.astype(jnp.float32), k.astype(jnp.float32),
                                                           v.astype(jnp.float32), **kw)
  check_close(case, ours, value_and_grads(ref, (q, k, v, log_beta), kwargs, cotangent, True))
