"""STEM (arXiv 2601.10639): the FFN up-projection replaced by a per-layer table row picked by the input token id.

  y_BxTxD = (silu(x_BxTxD @ W_gate) * U_l[stem_ids_BxT]) @ W_down        (dense: ... * (x @ W_up) ...)

Registered as "stem": the Llama decoder of decoder.py whose blocks in `model.stem.layers` use `StemFFN` and the
others the dense SwiGLU (`model.stem.layers=[]` is the dense twin, same init and parameter paths otherwise).
`stem_ids_BxT` (default: the input tokens) drives only the lookups, which is what knowledge editing changes.
`model.stem.offload`: tables (and their Adam moments, trainer.state) in pinned host memory; every read goes through
`gather_rows`, which moves only the batch's unique rows to the device (trainer.step differentiates w.r.t. them).
Specs: ../shared/specs/stem.md (model, accounting), kernels.md §5 (the lookup kernel).
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental.compute_on import compute_on

from tessera.models import decoder
from tessera.models import layers
from tessera.models import registry
from tessera.models.attention import head_dim

# model.stem.layers given as a fraction -> layer indices (stem.md §3, project default).
FRACTIONS = {
    "1/3": lambda n: range(1, n, 3),
    "1/2": lambda n: range(1, n, 2),
    "all": lambda n: range(n),
}

# model.stem.table_init -> std of the table entries. xavier_normal as the official main branch (on the V x F
# matrix); normal_1 as nn.Embedding (the `pr` branch), the unit scale of a dense up-projection's output.
TABLE_INITS = {
    "xavier_normal": lambda V, F: math.sqrt(2.0 / (V + F)),
    "normal_1": lambda V, F: 1.0,
}
TABLE_PARAM = "stem_table"  # parameter name; optim.groups and the sparse-row update match it on paths


def stem_layers(cfg):
  """Sorted layer indices from `model.stem.layers`: None -> all but layer 0; "1/3", "1/2", "all"; or a list."""
  layers_spec, n = cfg.stem.layers, cfg.n_layers
  if layers_spec is None:
    return tuple(range(1, n))
  if isinstance(layers_spec, str):
    if layers_spec not in FRACTIONS:
      raise ValueError(f"model.stem.layers: {layers_spec!r} is not a list or one of {sorted(FRACTIONS)}")
    return tuple(FRACTIONS[layers_spec](n))
  chosen = tuple(sorted({int(i) for i in layers_spec}))
  if any(not 0 <= i < n for i in chosen):
    raise ValueError(f"model.stem.layers: {list(layers_spec)} has indices outside [0, {n})")
  return chosen


def lookup(table_VxF, ids_BxT, gate_BxTxF, implementation, offload=False, batch_rows_of=None):
  """silu(gate) * table[ids]: the one place a STEM layer reads its table (kernels.stem_lookup: fp32 backward).

  With `offload` only the rows of the batch's unique ids are gathered from the table (wherever it lives) and moved
  to device memory, and the ids are renumbered into that compact [U, F] table: same values, same gradient.
  `batch_rows_of=V`: `table_VxF` already is that compact table (the train step gathered it from the host table of
  V rows, so the gradient lands on device rows, never on the host table).
  """
  from tessera.models.kernels import dispatch  # lazy, as attention.attend: kernels import Pallas
  if batch_rows_of is not None:
    ids_BxT = jnp.searchsorted(unique_ids(ids_BxT, batch_rows_of), ids_BxT).astype(jnp.int32)
  elif offload:
    unique_U = unique_ids(ids_BxT, table_VxF.shape[0])
    table_VxF, ids_BxT = gather_rows(table_VxF, unique_U), jnp.searchsorted(unique_U, ids_BxT).astype(jnp.int32)
  return dispatch.stem_lookup(table_VxF, ids_BxT, gate_BxTxF, implementation=implementation)


def unique_ids(ids_BxT, V):
  """The batch's sorted unique ids, padded with V to a static size min(V, B T): the rows offload moves."""
  return jnp.unique(ids_BxT, size=min(V, ids_BxT.size), fill_value=V)


_GATHER = jax.lax.GatherDimensionNumbers(offset_dims=(1,), collapsed_slice_dims=(0,), start_index_map=(0,))
_SCATTER = jax.lax.ScatterDimensionNumbers(update_window_dims=(1,), inserted_window_dims=(0,),
                                           scatter_dims_to_operand_dims=(0,))


def _on_host(x):
  return getattr(jax.typeof(x), "memory_space", None) == jax.memory.Space.Host


def gather_rows(table_VxF, ids_U):
  """table[ids] in device memory (padding ids >= V read row V - 1). A host table is read on the host (compute_on)
  with raw lax ops: jnp indexing makes device-memory constants that a host computation rejects."""
  ids_U = jnp.minimum(ids_U, table_VxF.shape[0] - 1)
  if not _on_host(table_VxF):
    return table_VxF[ids_U]
  ids_U = jax.device_put(ids_U, jax.memory.Space.Host)

  @compute_on("device_host")
  def gather(table_VxF, ids_U):
    return jax.lax.gather(table_VxF, ids_U[:, None], _GATHER, (1, table_VxF.shape[1]),
                          mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)

  return jax.device_put(gather(table_VxF, ids_U), jax.memory.Space.Device)


def scatter_rows(table_VxF, ids_U, rows_UxF):
  """table with rows ids set to `rows_UxF` (ids >= V dropped), written where the table lives (host or device)."""
  if not _on_host(table_VxF):
    return table_VxF.at[ids_U].set(rows_UxF.astype(table_VxF.dtype), mode="drop")

  @compute_on("device_host")
  def scatter(table_VxF, ids_U, rows_UxF):
    return jax.lax.scatter(table_VxF, ids_U[:, None], rows_UxF, _SCATTER,
                           mode=jax.lax.GatherScatterMode.FILL_OR_DROP)

  host = jax.memory.Space.Host
  return scatter(table_VxF, jax.device_put(ids_U, host), jax.device_put(rows_UxF.astype(table_VxF.dtype), host))


def _truncated_normal(std):
  return lambda key, shape, dtype=jnp.float32: (
      std * jax.random.truncated_normal(key, -3.0, 3.0, shape, jnp.float32)).astype(dtype)


class StemFFN(nnx.Module):
  """down(silu(x @ gate) * table[stem_ids]); table [V, F] in fp32 (master weights: fp32 gradient accumulation).

  `gate_init` / `down_init` default to Lingua's truncated normals (std d^-0.5, F^-0.5); the STEM decoder passes
  the backbone's initializers so its dense and STEM layers start alike.
  """

  def __init__(self, d_model, d_ff, vocab_size, *, table_init="xavier_normal", dtype=jnp.float32,
               param_dtype=jnp.float32, rngs, gate_init=None, down_init=None, lookup_impl="xla", offload=False):
    if table_init not in TABLE_INITS:
      raise ValueError(f"model.stem.table_init: {table_init!r} is not one of {sorted(TABLE_INITS)}")
    self.dtype = jnp.dtype(dtype)
    self.lookup_impl, self.offload = lookup_impl, offload
    self.vocab_size, self.batch_rows = vocab_size, False  # batch_rows: see lookup's batch_rows_of (train step)
    gate_init = gate_init or nnx.with_partitioning(_truncated_normal(d_model ** -0.5), ("embed", "mlp"))
    down_init = down_init or nnx.with_partitioning(_truncated_normal(d_ff ** -0.5), ("mlp", "embed"))
    table = nnx.with_partitioning(nnx.initializers.normal(TABLE_INITS[table_init](vocab_size, d_ff)),
                                  ("stem_vocab", "mlp"))
    self.gate = nnx.Param(gate_init(rngs.params(), (d_model, d_ff), jnp.dtype(param_dtype)))
    self.stem_table = nnx.Param(table(rngs.params(), (vocab_size, d_ff), jnp.float32))
    self.down = nnx.Param(down_init(rngs.params(), (d_ff, d_model), jnp.dtype(param_dtype)))
    assert self.stem_table.shape[1] == self.gate.shape[1], "STEM table width must equal d_ff"

  def __call__(self, x_BxTxD, stem_ids_BxT, stem_row_override=None):
    """`stem_row_override` = (ids_BxTxK, weights_BxTxK): where a position's weights sum to > 0 its row is the
    weighted sum of those ids' rows of this layer's table (editing's "mean" mode); elsewhere the normal lookup."""
    x_BxTxD = x_BxTxD.astype(self.dtype)
    gate_BxTxF = x_BxTxD @ self.gate[...].astype(self.dtype)
    h_BxTxF = lookup(self.stem_table[...], stem_ids_BxT, gate_BxTxF, self.lookup_impl, self.offload,
                     self.vocab_size if self.batch_rows else None)
    if stem_row_override is not None:
      ids_BxTxK, weights_BxTxK = stem_row_override
      rows_BxTxKxF = gather_rows(self.stem_table[...], ids_BxTxK.reshape(-1)).reshape(*ids_BxTxK.shape, -1)
      rows_BxTxF = jnp.einsum("btk,btkf->btf", weights_BxTxK.astype(jnp.float32), rows_BxTxKxF)
      mixed_BxTxF = (jax.nn.silu(gate_BxTxF.astype(jnp.float32)) * rows_BxTxF).astype(h_BxTxF.dtype)
      h_BxTxF = jnp.where((weights_BxTxK.sum(-1) > 0)[..., None], mixed_BxTxF, h_BxTxF)
    return h_BxTxF @ self.down[...].astype(self.dtype)

  @classmethod
  def from_config(cls, cfg, rngs):
    """From `config.model`, with the backbone's gate/down initializers."""
    return cls(cfg.d_model, cfg.d_ff, cfg.vocab_size, table_init=cfg.stem.table_init, dtype=cfg.dtype,
               param_dtype=cfg.param_dtype, rngs=rngs, lookup_impl=cfg.stem.lookup_impl, offload=cfg.stem.offload,
               gate_init=layers.kernel_init(cfg, ("embed", "mlp")),
               down_init=layers.kernel_init(cfg, ("mlp", "embed"), residual_out=True))


class DenseFFN(layers.SwiGLU):
  """The dense SwiGLU in a STEM decoder: same call signature as StemFFN, ignores the lookup ids."""

  def __call__(self, x_BxTxD, stem_ids_BxT=None, stem_row_override=None):
    del stem_ids_BxT, stem_row_override
    return super().__call__(x_BxTxD)


class StemDecoder(decoder.Decoder):
  """decoder.Decoder with STEM FFNs in `model.stem.layers`; blocks are unrolled (they differ, so no scan)."""

  def __init__(self, cfg, rngs):
    if cfg.scan_layers:
      raise ValueError("model.scan_layers: the STEM decoder mixes STEM and dense blocks; use scan_layers=False")
    self.stem_layers = stem_layers(cfg)
    super().__init__(cfg, rngs)

  def _make_blocks(self, cfg, rngs):
    return nnx.List([decoder.Block(cfg, rngs, StemFFN.from_config if i in self.stem_layers else DenseFFN)
                     for i in range(cfg.n_layers)])

  def __call__(self, tokens_BxT, *, segment_ids_BxT=None, positions_BxT=None, stem_ids_BxT=None,
               stem_row_override=None, cache=None, live_BxT=None):
    """`stem_ids_BxT` defaults to `tokens_BxT` (at decode: the new token's id); see StemFFN for
    `stem_row_override` and decoder.Decoder for `cache`."""
    stem_ids_BxT = tokens_BxT if stem_ids_BxT is None else stem_ids_BxT
    return self._forward(tokens_BxT, segment_ids_BxT, positions_BxT, stem_ids_BxT, stem_row_override,
                         cache=cache, live_BxT=live_BxT)


@registry.register("stem")
def build(cfg, rngs: nnx.Rngs) -> StemDecoder:
  return StemDecoder(cfg, rngs)


def accounting(cfg, seq_len):
  """Parameter and FLOP counts with the paper's definitions (stem.md §4); MFU uses `train_flops_per_token`.

  params_total_paper = N_dense + n_stem V F (the removed W_up not subtracted, as the paper reports it);
  params_stored = N_dense - n_stem d F + n_stem V F (what is in memory); params_active = N_dense - n_stem d F (per
  token: a table row is read, the rest of the table is not); flops_per_token_paper = 2 x active (the paper's
  "GFLOPs/token"); train_flops_per_token: the decoder's PaLM-style count with 2 d F (not 3 d F) matmul params per
  STEM layer (the lookup is free).
  """
  n_stem = len(stem_layers(cfg))
  d, F, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
  dense = decoder.param_count(cfg)["total"]
  removed, tables = n_stem * d * F, n_stem * V * F
  matmul_params = cfg.n_layers * decoder._layer_matmul_params(cfg) - removed + d * V
  attention = 12 * cfg.n_layers * seq_len * cfg.n_heads * head_dim(cfg)
  return {"params_stored": dense - removed + tables, "params_total_paper": dense + tables,
          "params_active": dense - removed, "params_stem_tables": tables, "stem_layers": n_stem,
          "flops_per_token_paper": 2.0 * (dense - removed),
          "train_flops_per_token": float(6 * matmul_params + attention)}


registry.accounting("stem")(accounting)
