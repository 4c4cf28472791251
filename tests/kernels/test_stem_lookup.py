"""STEM lookup: Pallas forward exact vs XLA, fp32-accumulated table gradient, out-of-range id policy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tessera.models import kernels


def zipf_ids(key, shape, vocab):
  """Heavily repeated ids (Zipf-like), so the scatter-add really accumulates."""
  u = jax.random.uniform(key, shape)
  return jnp.minimum((vocab ** u - 1).astype(jnp.int32), vocab - 1)


def inputs(seed, V, F, shape, dtype):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  table = jax.random.normal(k1, (V, F)).astype(dtype)
  gate = jax.random.normal(k2, (*shape, F)).astype(dtype)
  return table, zipf_ids(k3, shape, V), gate, jax.random.normal(k4, (*shape, F)).astype(dtype)


def grads(fn, table, ids, gate, cotangent):
  out, vjp = jax.vjp(lambda t, g: fn(t, ids, g), table, gate)
  return out, *vjp(cotangent)


@pytest.mark.parametrize("implementation", ["pallas", "xla"])
@pytest.mark.parametrize("shape", [(2, 24), (3, 5)], ids=["tiled", "padded_tokens"])
def test_forward_exact_and_fp32_gradients(implementation, shape):
  table, ids, gate, cotangent = inputs(sum(shape), 40, 96, shape, jnp.float32)
  fn = lambda t, i, g: kernels.stem_lookup(t, i, g, implementation=implementation)
  out, d_table, d_gate = jax.jit(lambda *a: grads(fn, *a))(table, ids, gate, cotangent)
  out_ref, d_table_ref, d_gate_ref = grads(kernels.stem_lookup_reference, table, ids, gate, cotangent)
  np.testing.assert_array_equal(out, out_ref)
  np.testing.assert_allclose(d_gate, d_gate_ref, atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(d_table, d_table_ref, atol=1e-5 * float(jnp.abs(d_table_ref).max()), rtol=0)


def test_bf16_table_gradient_beats_autodiff_scatter_add():
  table, ids, gate, cotangent = inputs(0, 64, 128, (4, 64), jnp.bfloat16)
  f32 = lambda x: x.astype(jnp.float32)
  exact = grads(kernels.stem_lookup_reference, f32(table), ids, f32(gate), f32(cotangent))[1]
  ours = grads(lambda t, i, g: kernels.stem_lookup(t, i, g, implementation="pallas"), table, ids, gate, cotangent)[1]
  autodiff = grads(kernels.stem_lookup_reference, table, ids, gate, cotangent)[1]
  assert ours.dtype == jnp.bfloat16
  error = lambda g: float(jnp.abs(g.astype(jnp.float32) - exact).max() / jnp.abs(exact).max())
  assert error(ours) < 8e-3
  assert error(ours) < error(autodiff)


@pytest.mark.parametrize("implementation", ["pallas", "xla"])
def test_out_of_range_ids_read_the_nearest_row(implementation):
  table, _, gate, _ = inputs(1, 16, 32, (1, 16), jnp.float32)
  ids = jnp.array([[-3, 0, 15, 16, 99] + [1] * 11])
  out = kernels.stem_lookup(table, ids, gate, implementation=implementation)
  expected = kernels.stem_lookup_reference(table, jnp.clip(ids, 0, 15), gate)
  np.testing.assert_array_equal(out, expected)
  assert np.all(np.isfinite(np.asarray(out)))
