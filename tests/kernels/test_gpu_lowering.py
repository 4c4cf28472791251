"""GPU lowering check that runs on a CPU-only machine (kernels.md 8).

Exporting for the "cuda" platform runs the Pallas -> Triton lowering and embeds `__gpu$xla.gpu.triton` custom
calls: non-power-of-two in-kernel shapes, unsupported primitives and bad BlockSpecs fail here, in CI, instead of
on a lent GPU. It does not run Triton -> PTX or ptxas.
"""

import re

import jax
from jax._src.pallas.triton import lowering as triton_lowering
import jax.numpy as jnp
import pytest

from tessera.models.kernels.attention_decode import decode_attention
from tessera.models.kernels.attention_pallas import BlockSizes, flash_attention
from tessera.models.kernels.stem_lookup import gated_lookup, lookup_pallas_call

TRITON = "__gpu$xla.gpu.triton"
sds = jax.ShapeDtypeStruct


def export_for_cuda(fn, *shapes):
  exported = jax.export.export(jax.jit(fn), platforms=("cuda",),
                               disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(TRITON)])(*shapes)
  return exported.mlir_module()


def triton_dots(monkeypatch, fn, *shapes):
  """(operand element type, input precision) of every `tt.dot` in the Triton modules `fn` lowers to.

  The exported module embeds the Triton IR as bytecode, so the text is captured where jax builds it (call this
  before any other lowering of `fn`: jax caches lowerings).
  """
  modules = []

  def capture(*args, **kwargs):
    result = lower(*args, **kwargs)
    modules.append(result.module.operation.get_asm())
    return result

  lower = triton_lowering.lower_jaxpr_to_triton_module
  monkeypatch.setattr(triton_lowering, "lower_jaxpr_to_triton_module", capture)
  export_for_cuda(fn, *shapes)
  dots = re.findall(r"tt\.dot [^:]*?(?:inputPrecision = (\w+) )?: tensor<\d+x\d+x(\w+)>", "\n".join(modules))
  assert modules and dots
  return [(dtype, precision or "ieee") for precision, dtype in dots]  # IEEE is Triton's default: no attribute


def attention_fwd_bwd(**kwargs):
  def fwd_bwd(q, k, v, log_beta):
    def attend(q, k, v, log_beta):
      return flash_attention(q, k, v, log_retention=log_beta, interpret=False, **kwargs)

    out, vjp = jax.vjp(attend, q, k, v, log_beta)
    return out, vjp(out)

  return fwd_bwd


@pytest.mark.parametrize("retention", ["mul_logit", "add_bias"])
def test_fp32_dots_are_ieee_and_bf16_dots_unchanged(monkeypatch, retention):
  """Issue 17: without an explicit precision the Triton lowering makes fp32 dots TF32 (interpret mode hides it)."""
  B, T, H, K, D = 1, 64, 2, 1, 32
  for dtype, want in ((jnp.float32, {("f32", "ieee")}), (jnp.bfloat16, {("bf16", "tf32")})):
    shapes = (sds((B, T, H, D), dtype), sds((B, T, K, D), dtype), sds((B, T, K, D), dtype),
              sds((B, K, T), jnp.float32))
    dots = triton_dots(monkeypatch, attention_fwd_bwd(retention_mode=retention), *shapes)
    assert set(dots) == want and len(dots) == 3 * (2 + 3 + 4)  # fwd, dQ, dKV; 3 loops: masked, full, masked


@pytest.mark.parametrize("retention", [None, "mul_logit", "add_bias"])
def test_attention_forward_and_backward_lower_to_triton(retention):
  B, T, H, K, D = 1, 256, 4, 2, 64

  def fwd_bwd(q, k, v, log_beta, segment_ids):
    def attend(q, k, v, log_beta):
      return flash_attention(q, k, v, segment_ids=segment_ids, log_retention=log_beta if retention else None,
                             retention_mode=retention or "mul_logit", interpret=False)

    out, vjp = jax.vjp(attend, q, k, v, log_beta)
    return out, vjp(out)

  module = export_for_cuda(fwd_bwd, sds((B, T, H, D), jnp.bfloat16), sds((B, T, K, D), jnp.bfloat16),
                           sds((B, T, K, D), jnp.bfloat16), sds((B, K, T), jnp.float32), sds((B, T), jnp.int32))
  assert module.count(TRITON) == 3
  for name in ("tessera_attention_fwd", "tessera_attention_dq", "tessera_attention_dkv"):
    assert name in module


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_decode_kernel_lowers_to_triton(monkeypatch, dtype):
  """Split-K decode over a 1000-slot cache with keep masks and retention: one kernel, full-block loop included."""
  B, T, H, K, D, S = 2, 1, 8, 2, 128, 1000

  def decode(q, k, v, kv_pos, keep, log_beta):
    return decode_attention(q, k, v, q_positions=jnp.full((B, T), S, jnp.int32), kv_positions=kv_pos, keep=keep,
                            log_retention=log_beta, interpret=False)

  shapes = (sds((B, T, H, D), dtype), sds((B, S, K, D), dtype), sds((B, S, K, D), dtype),
            sds((B, K, S), jnp.int32), sds((B, K, S), jnp.int8), sds((B, K, S), jnp.float32))
  want = ("f32", "ieee") if dtype == jnp.float32 else ("bf16", "tf32")
  assert triton_dots(monkeypatch, decode, *shapes) == [want] * 6  # QK and PV in each of the three loops
  module = export_for_cuda(decode, *shapes)  # (lowered above: jax reuses it)
  assert module.count(TRITON) == 1 and "tessera_attention_decode" in module


def test_stem_lookup_lowers_to_triton():
  def fwd_bwd(table, ids, gate):
    out, vjp = jax.vjp(lambda t, g: gated_lookup(t, ids, g, use_pallas=True, interpret=False), table, gate)
    return out, vjp(out)

  module = export_for_cuda(fwd_bwd, sds((1000, 256), jnp.bfloat16), sds((4, 64), jnp.int32),
                           sds((4, 64, 256), jnp.bfloat16))
  assert module.count(TRITON) == 1 and "tessera_stem_lookup" in module


def test_non_power_of_two_block_is_rejected():
  with pytest.raises(ValueError, match="power of 2"):
    export_for_cuda(lambda t, i, g: lookup_pallas_call(t, i, g, block_t=16, block_f=96, interpret=False),
                    sds((100, 192), jnp.bfloat16), sds((64,), jnp.int32), sds((64, 192), jnp.bfloat16))
  with pytest.raises(ValueError, match="powers of two"):
    x = jnp.zeros((1, 64, 2, 32))
    flash_attention(x, x, x, block_sizes=BlockSizes(q=48), interpret=False)
