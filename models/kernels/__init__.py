"""Pallas kernels with their XLA references; depends on nothing else in tessera."""

from tessera.models.kernels.attention_decode import decode_attention
from tessera.models.kernels.attention_pallas import BlockSizes, flash_attention
from tessera.models.kernels.attention_reference import attention_reference
from tessera.models.kernels.dispatch import attention, stem_lookup
from tessera.models.kernels.stem_lookup import stem_lookup_reference

__all__ = ["BlockSizes", "attention", "attention_reference", "decode_attention", "flash_attention", "stem_lookup",
           "stem_lookup_reference"]
