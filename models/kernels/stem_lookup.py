"""STEM lookup fused with the gate: h = silu(gate) * table[ids] (kernels.md 5).

The forward is either XLA's gather (one loop fusion with silu and the multiply) or a Pallas kernel that gathers
table rows in-kernel (the table stays in HBM, `memory_space=pl.ANY`). Both share one `custom_vjp` whose table
gradient is a scatter-add accumulated in fp32 and only then cast to the table dtype: autodiff's scatter-add runs
in the table dtype, which loses ~2x accuracy on a bf16 table with repeated ids.

Ids are clipped into [0, V): out-of-range ids read the nearest valid row in every implementation, never NaN
(`jnp.take`'s fill) or arbitrary memory (an unchecked in-kernel gather).
"""

import functools

import jax
from jax.experimental import pallas as pl
import jax.numpy as jnp
import numpy as np

from tessera.models.kernels.backend import pallas_interpret, triton_params


def stem_lookup_reference(table_VxF, ids, gate):
  """Plain autodiff version (table gradient in the table dtype): the baseline the fused backward improves on."""
  return (jax.nn.silu(gate.astype(jnp.float32)) * table_VxF[ids].astype(jnp.float32)).astype(gate.dtype)


def _largest_power_of_two_divisor(n, cap):
  return min(n & -n, cap)


def _lookup_kernel(ids_ref, gate_ref, table_ref, out_ref, *, block_f):
  j = pl.program_id(1)
  rows = table_ref[ids_ref[...], pl.ds(pl.multiple_of(j * block_f, block_f), block_f)]  # in-kernel row gather
  gate = gate_ref[...].astype(jnp.float32)
  out_ref[...] = (jax.nn.sigmoid(gate) * gate * rows.astype(jnp.float32)).astype(out_ref.dtype)


def lookup_pallas_call(table_VxF, ids_N, gate_NxF, *, block_t, block_f, interpret):
  """The raw kernel: N and F must be multiples of the (power-of-two) blocks."""
  (N, F) = gate_NxF.shape
  return pl.pallas_call(
      functools.partial(_lookup_kernel, block_f=block_f), grid=(N // block_t, F // block_f),
      in_specs=[pl.BlockSpec((block_t,), lambda i, j: (i,)), pl.BlockSpec((block_t, block_f), lambda i, j: (i, j)),
                pl.BlockSpec(memory_space=pl.ANY)],
      out_specs=pl.BlockSpec((block_t, block_f), lambda i, j: (i, j)),
      out_shape=jax.ShapeDtypeStruct(gate_NxF.shape, gate_NxF.dtype),
      compiler_params=triton_params(block_f), interpret=interpret, name="tessera_stem_lookup",
  )(ids_N, gate_NxF, table_VxF)


def _pallas_forward(table_VxF, ids_N, gate_NxF, *, interpret, block_t=64, block_f=256):
  """Tiles divide N and F when they can (no copies); otherwise the tokens are padded to a whole tile."""
  N, F = gate_NxF.shape
  block_f = _largest_power_of_two_divisor(F, block_f)
  if block_f < 16:
    raise ValueError(f"the Pallas lookup needs d_ff % 16 == 0, got {F}: use implementation='xla'")
  block_t = _largest_power_of_two_divisor(N, block_t)
  if block_t >= 16:
    return lookup_pallas_call(table_VxF, ids_N, gate_NxF, block_t=block_t, block_f=block_f, interpret=interpret)
  pad = (-N) % 16
  out = lookup_pallas_call(table_VxF, jnp.pad(ids_N, (0, pad)), jnp.pad(gate_NxF, ((0, pad), (0, 0))), block_t=16,
                           block_f=block_f, interpret=interpret)
  return out[:N]


def _xla_forward(table_VxF, ids_N, gate_NxF):
  return stem_lookup_reference(table_VxF, ids_N, gate_NxF)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _gated_lookup(use_pallas, interpret, table_VxF, ids_N, gate_NxF):
  if use_pallas:
    return _pallas_forward(table_VxF, ids_N, gate_NxF, interpret=interpret)
  return _xla_forward(table_VxF, ids_N, gate_NxF)


def _gated_lookup_fwd(use_pallas, interpret, table_VxF, ids_N, gate_NxF):
  return _gated_lookup(use_pallas, interpret, table_VxF, ids_N, gate_NxF), (table_VxF, ids_N, gate_NxF)


def _gated_lookup_bwd(use_pallas, interpret, residuals, dh_NxF):
  table_VxF, ids_N, gate_NxF = residuals
  gate = gate_NxF.astype(jnp.float32)
  dh = dh_NxF.astype(jnp.float32)
  sig = jax.nn.sigmoid(gate)
  rows = table_VxF[ids_N].astype(jnp.float32)
  d_gate = dh * rows * sig * (1.0 + gate * (1.0 - sig))  # silu'(g) = s(g) (1 + g (1 - s(g)))
  d_table = jax.ops.segment_sum(dh * gate * sig, ids_N, num_segments=table_VxF.shape[0])  # fp32 accumulation
  return d_table.astype(table_VxF.dtype), np.zeros(ids_N.shape, jax.dtypes.float0), d_gate.astype(gate_NxF.dtype)


_gated_lookup.defvjp(_gated_lookup_fwd, _gated_lookup_bwd)


def gated_lookup(table_VxF, ids, gate, *, use_pallas, interpret=None):
  """silu(gate) * table[ids] with the fp32 scatter-add backward; ids [...], gate [..., F] -> [..., F]."""
  V, F = table_VxF.shape
  if gate.shape != (*ids.shape, F):
    raise ValueError(f"gate must be ids.shape + (d_ff,) = {(*ids.shape, F)}, got {gate.shape}")
  ids_N = jnp.clip(ids.reshape(-1).astype(jnp.int32), 0, V - 1)
  interpret = (pallas_interpret() if use_pallas else False) if interpret is None else interpret
  return _gated_lookup(use_pallas, interpret, table_VxF, ids_N, gate.reshape(-1, F)).reshape(gate.shape)
