"""Backend policy shared by the kernels: which implementation runs where, and how Pallas is invoked.

Pallas kernels lower through Triton on GPU and run in interpret mode on CPU (tests); everything else
(TPU until a Mosaic-TPU variant exists) uses the XLA reference.
"""

import jax
from jax.experimental.pallas import triton as pltriton
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "xla", "pallas", "cudnn")

# Finite mask value: a -inf mask turns the online softmax's m_old - m_new into inf - inf = NaN.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def check_implementation(implementation):
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")


def pallas_interpret():
  """Interpret mode exactly where the backend cannot compile Pallas (CPU); real kernels on GPU."""
  backend = jax.default_backend()
  if backend == "cpu":
    return True
  if backend == "gpu":
    return False
  raise NotImplementedError(f"no Pallas kernel for backend {backend!r}: use implementation='xla'")


def dot(a, b, trans_a=False, trans_b=False):
  """In-kernel matmul with fp32 accumulation; fp32 operands get an explicit IEEE (HIGHEST) precision.

  Without it the Triton lowering turns the default precision into TF32 for fp32 operands (10-bit mantissa), which
  only interpret mode hides. bf16/fp16 operands keep the default (Triton ignores the TF32 flag for them).
  """
  precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return pltriton.dot(a, b, trans_a=trans_a, trans_b=trans_b, precision=precision)


def triton_params(head_dim, num_stages=2):
  """Explicit Triton compiler params: without them GPU lowering fails ("Cannot lower pallas_call")."""
  return pltriton.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=num_stages)


def block_for(length, block):
  """Power-of-two block no larger than needed for `length` (>= 16, the smallest Triton dot tile)."""
  if block & (block - 1):
    raise ValueError(f"block sizes must be powers of two, got {block}")
  return max(16, min(block, 1 << max(0, (length - 1).bit_length())))


def round_up(length, block):
  return -(-length // block) * block
