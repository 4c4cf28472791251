"""Pallas attention vs the XLA reference: forward and gradients (random cotangent), fp32 and bf16.

On CPU the kernels run in interpret mode, which fills every output buffer with NaN before the kernel runs (checked
below), so a block the grid never writes shows up as NaN in these comparisons. Each case draws fresh inputs.
"""

import dataclasses
import itertools
import zlib

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
import numpy as np
import pytest

from tessera.models import kernels

BLOCKS_16 = kernels.BlockSizes(16, 16, 16, 16, 16, 16)
BLOCKS_MIXED = kernels.BlockSizes(q=32, kv=16, dq_q=16, dq_kv=32, dkv_q=32, dkv_kv=16)


@dataclasses.dataclass(frozen=True)
class Case:
  dtype: str = "float32"
  B: int = 1
  T: int = 32
  S: int = 32
  H: int = 2
  K: int = 1
  D: int = 32
  causal: bool = True
  segments: bool = False
  retention: str | None = None  # None, "mul_logit" or "add_bias"
  cache: str | None = None  # None, "prefill" (queries after the keys) or "compacted" (30% evicted, sparse positions)
  blocks: kernels.BlockSizes = BLOCKS_16

  def __str__(self):
    return (f"{self.dtype}-B{self.B}T{self.T}S{self.S}H{self.H}K{self.K}D{self.D}-causal{int(self.causal)}"
            f"-seg{int(self.segments)}-{self.retention}-{self.cache}-bq{self.blocks.q}bk{self.blocks.kv}")


def make_inputs(case):
  """Fresh random inputs, seeded by the case itself."""
  keys = iter(jax.random.split(jax.random.key(zlib.crc32(str(case).encode())), 8))
  dtype = jnp.dtype(case.dtype)
  q = jax.random.normal(next(keys), (case.B, case.T, case.H, case.D)).astype(dtype)
  k = jax.random.normal(next(keys), (case.B, case.S, case.K, case.D)).astype(dtype)
  v = jax.random.normal(next(keys), (case.B, case.S, case.K, case.D)).astype(dtype)
  log_beta = -jax.random.uniform(next(keys), (case.B, case.K, case.S), maxval=0.2)
  kwargs = dict(causal=case.causal)
  if case.segments:  # two or three packed documents per row, positions restarting per document
    cuts = jnp.sort(jax.random.randint(next(keys), (case.B, 2), 1, case.T), axis=1)
    seg = (jnp.arange(case.T)[None, :, None] >= cuts[:, None, :]).sum(-1).astype(jnp.int32)
    starts = jnp.where(seg == 0, 0, jnp.take_along_axis(cuts, jnp.maximum(seg - 1, 0), axis=1))
    pos = (jnp.arange(case.T)[None] - starts).astype(jnp.int32)
    assert case.T == case.S
    kwargs.update(segment_ids=seg, q_positions=pos, kv_positions=pos)
  if case.cache == "prefill":
    kwargs["q_positions"] = jnp.broadcast_to(case.S - case.T + jnp.arange(case.T, dtype=jnp.int32), (case.B, case.T))
  if case.cache == "compacted":  # per-head sorted, non-contiguous positions; queries at the end; 30% evicted
    scores = jax.random.uniform(next(keys), (case.B, case.K, 2 * case.S))
    kwargs["kv_positions"] = jnp.sort(jnp.argsort(scores, axis=-1)[..., :case.S], axis=-1).astype(jnp.int32)
    kwargs["keep"] = (jax.random.uniform(next(keys), (case.B, case.K, case.S)) > 0.3).astype(jnp.int8)
    kwargs["q_positions"] = jnp.broadcast_to(2 * case.S + jnp.arange(case.T, dtype=jnp.int32), (case.B, case.T))
  if case.retention:
    kwargs["retention_mode"] = case.retention
  cotangent = jax.random.normal(next(keys), q.shape)
  return (q, k, v, log_beta), kwargs, cotangent


def value_and_grads(fn, args, kwargs, cotangent, retention):
  """Output and vjp with a random cotangent (a .sum() loss would make do all ones and hide delta bugs)."""

  def call(q, k, v, log_beta):
    return fn(q, k, v, **kwargs, **({"log_retention": log_beta} if retention else {}))

  def run(*args):
    out, vjp = jax.vjp(call, *args)
    return out, vjp(cotangent.astype(out.dtype))

  return jax.jit(run)(*args)


def run_both(case):
  args, kwargs, cotangent = make_inputs(case)
  fn = lambda *a, **kw: kernels.attention(*a, implementation="pallas", block_sizes=case.blocks, **kw)
  ref = lambda q, k, v, **kw: kernels.attention_reference(q.astype(jnp.float32), k.astype(jnp.float32),
                                                           v.astype(jnp.float32), **kw)
  ours = value_and_grads(fn, args, kwargs, cotangent, case.retention)
  theirs = value_and_grads(ref, args, kwargs, cotangent, case.retention)
  return ours, theirs


def relative_error(x, ref):
  x, ref = np.asarray(x, np.float32), np.asarray(ref, np.float32)
  return float(np.abs(x - ref).max() / max(np.abs(ref).max(), 1.0))


def check_close(case, ours, theirs):
  (o, grads), (o_ref, grads_ref) = ours, theirs
  assert o.dtype == jnp.dtype(case.dtype)
  fp32 = case.dtype == "float32"
  fwd_tol = 1e-6 if fp32 else (2e-2 if case.retention else 1e-2)
  grad_tol = 5e-6 if fp32 else 2e-2
  assert relative_error(o, o_ref) <= fwd_tol
  for name, g, g_ref in zip(("dq", "dk", "dv"), grads[:3], grads_ref[:3]):
    assert g.dtype == jnp.dtype(case.dtype), name
    assert relative_error(g, g_ref) <= grad_tol, name
  if case.retention:
    assert relative_error(grads[3], grads_ref[3]) <= (grad_tol if fp32 else 8e-2), "d log_beta"
    assert np.abs(np.asarray(grads_ref[3])).max() > 0  # the retention gradient is really exercised


CASES = [
    Case(B=2, T=40, S=40, H=4, K=2, segments=True, retention="mul_logit"),  # padding, GQA 2, packed documents
    Case(T=64, S=64, H=4, K=1, D=64, retention="add_bias", blocks=BLOCKS_MIXED),  # GQA 4, bq != bk
    Case(B=2, T=48, S=48, causal=False, segments=True, K=2),  # GQA 1, non-causal
    Case(T=24, S=72, H=4, K=2, retention="mul_logit", cache="prefill", blocks=BLOCKS_MIXED),
    Case(B=2, T=24, S=64, H=8, K=2, retention="mul_logit", cache="compacted"),  # T > 16: flash, not decode
    Case(T=33, S=33, D=40, retention="add_bias", blocks=kernels.BlockSizes()),  # default blocks, D padded to 64
    Case("bfloat16", B=2, T=80, S=80, H=4, K=2, D=64, segments=True, retention="mul_logit",
         blocks=kernels.BlockSizes(32, 32, 32, 32, 32, 32)),
    Case("bfloat16", T=64, S=64, H=4, K=1, retention="add_bias", blocks=BLOCKS_MIXED),
    Case("bfloat16", B=2, T=50, S=50, H=2, K=2, D=64, segments=True),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(case):
  check_close(case, *run_both(case))


SWEEP = [Case(dtype, B, T, S, H, K, D, causal, segments, retention, None, blocks)
         for dtype, B, (T, S), (H, K), D, causal, segments, retention, blocks in itertools.product(
             ("float32", "bfloat16"), (1, 2), ((64, 64), (100, 100)), ((4, 4), (4, 2), (4, 1)), (32, 64),
             (True, False), (False, True), (None, "mul_logit", "add_bias"), (BLOCKS_16, BLOCKS_MIXED))
         if not (retention and not causal)]


@pytest.mark.slow
@pytest.mark.parametrize("case", SWEEP[::13], ids=str)
def test_sweep_matches_reference(case):
  check_close(case, *run_both(case))


def test_interpret_mode_poisons_unwritten_blocks():
  """The premise of the NaN check above: interpret mode starts every output as NaN."""
  if jax.default_backend() != "cpu":
    pytest.skip("interpret mode only")

  def writes_first_block_only(x_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      o_ref[...] = x_ref[...]

  out = pl.pallas_call(writes_first_block_only, grid=(2,), in_specs=[pl.BlockSpec((8,), lambda i: (i,))],
                       out_specs=pl.BlockSpec((8,), lambda i: (i,)), out_shape=jax.ShapeDtypeStruct((16,), jnp.float32),
                       interpret=True)(jnp.ones(16))
  assert np.all(np.asarray(out[:8]) == 1) and np.all(np.isnan(np.asarray(out[8:])))


def test_deterministic_and_diagonal_only_rows():
  """Every token its own document: each row sees only its diagonal key, so o = v exactly; twice, bitwise."""
  case = Case(B=1, T=32, S=32, H=4, K=2, retention="mul_logit")
  (q, k, v, log_beta), _, cotangent = make_inputs(case)
  kwargs = dict(segment_ids=jnp.arange(32, dtype=jnp.int32)[None])
  first, second = (value_and_grads(lambda *a, **kw: kernels.attention(*a, implementation="pallas",
                                                                       block_sizes=BLOCKS_16, **kw),
                                   (q, k, v, log_beta), kwargs, cotangent, True) for _ in range(2))
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(first[0], jnp.repeat(v, 2, axis=2), atol=1e-6)


def test_evicted_rows_and_strong_decay_are_finite():
  """lb in [-50, 0], long distances and a fully evicted KV head: no NaN/Inf, and rows that see nothing give 0."""
  case = Case(B=2, T=128, S=128, H=4, K=2, D=32, retention="mul_logit",
              blocks=kernels.BlockSizes(64, 32, 32, 64, 64, 32))
  (q, k, v, _), _, cotangent = make_inputs(case)
  log_beta = -50.0 * jax.random.uniform(jax.random.key(1), (2, 2, 128)) ** 4
  keep = jnp.ones((2, 2, 128), jnp.int8).at[0, 1].set(0)
  kwargs = dict(keep=keep, q_positions=jnp.broadcast_to(jnp.arange(128) * 100, (2, 128)),
                kv_positions=jnp.broadcast_to(jnp.arange(128) * 100, (2, 128)))
  fn = lambda *a, **kw: kernels.attention(*a, implementation="pallas", block_sizes=case.blocks, **kw)
  ours = value_and_grads(fn, (q, k, v, log_beta), kwargs, cotangent, True)
  theirs = value_and_grads(kernels.attention_reference, (q, k, v, log_beta), kwargs, cotangent, True)
  for leaf in jax.tree.leaves(ours):
    assert np.all(np.isfinite(np.asarray(leaf)))
  np.testing.assert_array_equal(np.asarray(ours[0][0, :, 2:]), 0.0)  # query heads 2, 3 read the evicted KV head
  check_close(case, ours, theirs)
