"""A per-layer, per-KV-head KV cache of fixed capacity, and the eviction policies that bound it.

Shapes are static under jit. A layer holds k/v [B, C, K, E] (the attention kernels' key layout, so decode reads the
cache without a transpose) and, per row and KV head, positions [B, K, C], a length [B, K] and a score [B, K, C]
(a running statistic a policy may read; zeros unless a model writes it). Slots [0, length) are live and sorted by
position; positions are the tokens' true positions, so RoPE and the causal mask stay right after eviction.

Capacity C = M + buffer. When a head's length reaches C it keeps M entries chosen by its policy (the newest is never
evicted), so eviction runs once every `buffer` tokens, not every token. `full` never evicts: its capacity is
prompt + new tokens. A policy is one small function registered by name:

  policy(inputs: PolicyInputs, budget: int) -> keep indices [B, K, budget] into the N candidates

(`keep_top` turns a priority into such indices). Built in: full, window, sink_window (StreamingLLM: sinks + window),
random, h2o (heavy hitters by accumulated attention + recent window); methods register their own (trimkv_cache.py). Sharding: rows over the logical "batch" axis, KV heads over
"kv_heads", resolved through the active flax logical-axis rules and mesh (a no-op without them).
"""

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from flax.core import spmd
from jax.sharding import PartitionSpec as P

_POLICIES: dict[str, Callable] = {}
_SCORES: dict[str, tuple] = {}  # name -> (score kind, what a model needs for it)
_NEVER = jnp.iinfo(jnp.int32).max  # sort key of dead slots: after every live position
SCORE_KINDS = (None, "attention", "token")


def register(name, score=None, needs=""):
  """Decorator: `@register("h2o", score="attention") def h2o(inputs, budget): ...` makes `Policy(name="h2o")` valid.

  `score` says what the slots' scores hold: None (zeros), "attention" (the attention probability each slot has
  received, summed over its KV group's query heads and every query since it entered: H2O), "token" (one score per
  token written by the model when the token enters, e.g. a learned retention; `needs` names such a model for the
  error a model without one gets)."""
  if score not in SCORE_KINDS:
    raise ValueError(f"cache policy {name!r}: score must be one of {SCORE_KINDS}, got {score!r}")

  def wrap(fn):
    _POLICIES[name] = fn
    _SCORES[name] = (score, needs)
    return fn
  return wrap


def names():
  return sorted(_POLICIES)


def check_model(policy, model):
  """ValueError (one line) when `model` cannot feed `policy`: a "token" policy needs a model whose attribute
  `writes_token_scores` is true."""
  kind, needs = _SCORES[policy.name]
  if kind == "token" and not getattr(model, "writes_token_scores", False):
    raise ValueError(f"--kv-policy {policy.name}: this run's model ({type(model).__name__}) writes no per-token "
                     f"cache scores; the policy needs {needs or 'a model that does'}")


class PolicyInputs(NamedTuple):
  """What a policy sees about the N eviction candidates of every (row, KV head)."""
  positions_BxKxN: jax.Array  # int32 true token positions
  live_BxKxN: jax.Array  # bool: a real token (dead slots must not be kept over live ones)
  scores_BxKxN: jax.Array  # float32 running statistic (LayerCache.scores)
  sinks: int  # Policy.sinks
  key: jax.Array  # for stochastic policies: fold of Policy.seed and the newest position


def keep_top(priority_BxKxN, inputs, budget):
  """Indices of the `budget` live entries of highest priority; the newest live entry always stays, dead ones
  come last (they fill the budget only when fewer live entries exist, and stay dead)."""
  newest_BxK = jnp.max(jnp.where(inputs.live_BxKxN, inputs.positions_BxKxN, -1), axis=-1)
  priority = jnp.where(inputs.live_BxKxN, priority_BxKxN.astype(jnp.float32), -jnp.inf)
  priority = jnp.where(inputs.live_BxKxN & (inputs.positions_BxKxN == newest_BxK[..., None]), jnp.inf, priority)
  return jax.lax.top_k(priority, budget)[1]


@register("window")
def window(inputs, budget):
  """The most recent `budget` tokens."""
  return keep_top(inputs.positions_BxKxN, inputs, budget)


@register("full")
def full(inputs, budget):
  """Never asked to evict (capacity covers prompt + new tokens); if it were, it would keep the most recent."""
  return window(inputs, budget)


@register("sink_window")
def sink_window(inputs, budget):
  """The first `sinks` positions (attention sinks, StreamingLLM) plus the most recent budget - sinks tokens."""
  pos = inputs.positions_BxKxN.astype(jnp.float32)
  return keep_top(jnp.where(inputs.positions_BxKxN < inputs.sinks, pos + 2.0 ** 30, pos), inputs, budget)


@register("random")
def random_eviction(inputs, budget):
  """`budget` entries drawn uniformly (seeded by Policy.seed and the newest position); the newest stays."""
  return keep_top(jax.random.uniform(inputs.key, inputs.positions_BxKxN.shape), inputs, budget)


@register("h2o", score="attention")
def h2o(inputs, budget):
  """H2O (Zhang et al. 2023): the budget - budget // 2 most recent entries plus the budget // 2 "heavy hitters" of
  largest accumulated attention (scores: the attention each entry has received since it entered the cache)."""
  recent = budget - budget // 2
  live_pos_BxKxN = jnp.where(inputs.live_BxKxN, inputs.positions_BxKxN, -1)
  threshold_BxKx1 = jax.lax.top_k(live_pos_BxKxN, min(recent, live_pos_BxKxN.shape[-1]))[0][..., -1:]
  is_recent_BxKxN = live_pos_BxKxN >= threshold_BxKx1
  return keep_top(jnp.where(is_recent_BxKxN, 2.0 ** 60, inputs.scores_BxKxN), inputs, budget)


@dataclasses.dataclass(frozen=True)
class Policy:
  """Static cache settings (hashable: a jit static argument). `budget` M and `buffer` B as in --kv-budget and
  --kv-buffer (None: max(8, M // 4)); `full` needs neither (`resolve` sizes it to prompt + new tokens)."""
  name: str = "full"
  budget: int = 0
  buffer: int | None = None
  sinks: int = 0
  seed: int = 0

  def __post_init__(self):
    if self.name not in _POLICIES:
      raise ValueError(f"unknown cache policy {self.name!r}; known: {', '.join(names())}")
    if self.name == "full":
      return
    if self.budget <= 0:
      raise ValueError(f"cache policy {self.name!r} needs a budget M >= 1 (got {self.budget})")
    if self.buffer is not None and self.buffer < 1:
      raise ValueError(f"cache buffer must be >= 1 (got {self.buffer})")
    if self.sinks < 0 or (self.sinks and self.sinks >= self.budget):
      raise ValueError(f"cache sinks must be in [0, budget={self.budget}) (got {self.sinks})")

  @property
  def evicts(self):
    return self.name != "full"

  @property
  def score(self):
    """What the slots' scores hold: None, "attention" or "token" (see `register`)."""
    return _SCORES[self.name][0]

  @property
  def capacity(self):
    """C = M + B slots per (row, KV head)."""
    buffer = max(8, self.budget // 4) if self.buffer is None else self.buffer
    return self.budget + (buffer if self.evicts else 0)

  def resolve(self, prompt_len, max_new_tokens):
    """`full` sized for this request (never evicts); bounded policies unchanged."""
    if self.evicts:
      return self
    return dataclasses.replace(self, budget=prompt_len + max_new_tokens, buffer=0)


@struct.dataclass
class LayerCache:
  """One layer's cache (or all layers', with a leading L axis on every array, for scanned models)."""
  k_BxCxKxE: jax.Array
  v_BxCxKxE: jax.Array
  positions_BxKxC: jax.Array  # int32
  lengths_BxK: jax.Array  # int32: live slots are [0, length)
  scores_BxKxC: jax.Array  # float32
  policy: Policy = struct.field(pytree_node=False)

  def live_BxKxC(self):
    C = self.positions_BxKxC.shape[-1]
    return jnp.arange(C, dtype=jnp.int32) < self.lengths_BxK[..., None]


@struct.dataclass
class KVCache:
  """The whole model's cache: a tuple of LayerCache (unrolled blocks) or one stacked LayerCache (scanned)."""
  layers: tuple | LayerCache

  def nbytes(self):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self))

  def positions(self, layer=0):
    """(positions [B, K, C], lengths [B, K]) of one layer: what the cache holds, for tests and inspection."""
    c = self.layers[layer] if isinstance(self.layers, tuple) else jax.tree.map(lambda a: a[layer], self.layers)
    return c.positions_BxKxC, c.lengths_BxK


def init(policy, batch, n_layers, kv_heads, head_dim, dtype, stacked=False):
  """An empty cache (policy already `resolve`d); call inside jit so it is created in place and sharded."""
  C = policy.capacity

  def layer(*lead):
    return constrain(LayerCache(
        k_BxCxKxE=jnp.zeros((*lead, batch, C, kv_heads, head_dim), dtype),
        v_BxCxKxE=jnp.zeros((*lead, batch, C, kv_heads, head_dim), dtype),
        positions_BxKxC=jnp.zeros((*lead, batch, kv_heads, C), jnp.int32),
        lengths_BxK=jnp.zeros((*lead, batch, kv_heads), jnp.int32),
        scores_BxKxC=jnp.zeros((*lead, batch, kv_heads, C), jnp.float32), policy=policy))

  return KVCache(layer(n_layers) if stacked else tuple(layer() for _ in range(n_layers)))


def batch_multiple():
  """How many ways the active mesh splits the batch (1 without a mesh): the engine pads rows to a multiple."""
  mesh = jax.sharding.get_abstract_mesh()
  axes = _mesh_axes("batch")
  if mesh.empty or not axes:
    return 1
  return math.prod(mesh.shape[a] for a in axes if a in mesh.shape)


def _mesh_axes(logical):
  """The mesh axes a logical name maps to under the active rules: a tuple (empty: replicated / no rules)."""
  rules = dict(spmd.get_logical_axis_rules() or ())
  axes = rules.get(logical)
  if axes is None:
    return ()
  return tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)


def constrain(cache):
  """Rows over the "batch" mesh axes, KV heads over "kv_heads"; dims that do not divide stay replicated."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return cache

  def spec(x, batch_dim, head_dim):
    parts = [None] * x.ndim
    for dim, logical in ((batch_dim, "batch"), (head_dim, "kv_heads")):
      axes = tuple(a for a in _mesh_axes(logical) if a in mesh.shape)
      size = math.prod(mesh.shape[a] for a in axes)
      if axes and x.shape[dim] % size == 0:
        parts[dim] = axes
    return jax.lax.with_sharding_constraint(x, P(*parts))

  lead = cache.lengths_BxK.ndim - 2  # 1 for a stacked cache
  return cache.replace(
      k_BxCxKxE=spec(cache.k_BxCxKxE, lead, lead + 2), v_BxCxKxE=spec(cache.v_BxCxKxE, lead, lead + 2),
      positions_BxKxC=spec(cache.positions_BxKxC, lead, lead + 1), lengths_BxK=spec(cache.lengths_BxK, lead, lead + 1),
      scores_BxKxC=spec(cache.scores_BxKxC, lead, lead + 1))


# --- writes ---------------------------------------------------------------------------------------------------


def _put_rows(buf_BxCxKxE, new_BxKxE, slot_BxK):
  """buf[b, slot[b, k], k] = new[b, k] (a batched dynamic update: no gather of the whole cache)."""
  put = lambda buf_CxE, row_E, slot: jax.lax.dynamic_update_index_in_dim(buf_CxE, row_E, slot, 0)
  return jax.vmap(jax.vmap(put, in_axes=(1, 0, 0), out_axes=1))(buf_BxCxKxE, new_BxKxE, slot_BxK)


def _put_scalars(buf_BxKxC, new_BxK, slot_BxK):
  put = lambda buf_C, x, slot: jax.lax.dynamic_update_index_in_dim(buf_C, x, slot, 0)
  return jax.vmap(jax.vmap(put))(buf_BxKxC, new_BxK, slot_BxK)


def _token_scores(policy, token_scores_BxKxT, shape):
  """The scores new tokens enter with: the model's for a "token" policy (required), else zeros."""
  if policy.score != "token":
    return jnp.zeros(shape, jnp.float32)
  if token_scores_BxKxT is None:
    raise ValueError(f"cache policy {policy.name!r} needs per-token scores from the model; "
                     f"{_SCORES[policy.name][1] or 'this model writes none'}")
  return token_scores_BxKxT.astype(jnp.float32)


def append_one(cache, k_Bx1xKxE, v_Bx1xKxE, positions_Bx1, live_Bx1=None, token_scores_BxKx1=None):
  """Decode write: the new token goes to slot `length` of every head (with its score, `_token_scores`), then heads
  that reached capacity evict. A dead row (live False) writes nothing that counts: its length does not grow.

  Slot `length` is always free: a head is compacted to M < C as soon as it reaches C.
  """
  B, _, K, _ = k_Bx1xKxE.shape
  slot_BxK = cache.lengths_BxK
  pos_BxK = jnp.broadcast_to(positions_Bx1.astype(jnp.int32), (B, K))
  grow_BxK = jnp.ones((B, K), jnp.int32) if live_Bx1 is None else jnp.broadcast_to(live_Bx1.astype(jnp.int32),
                                                                                     (B, K))
  score_BxK = _token_scores(cache.policy, token_scores_BxKx1, (B, K, 1))[..., 0]
  cache = cache.replace(
      k_BxCxKxE=_put_rows(cache.k_BxCxKxE, k_Bx1xKxE[:, 0].astype(cache.k_BxCxKxE.dtype), slot_BxK),
      v_BxCxKxE=_put_rows(cache.v_BxCxKxE, v_Bx1xKxE[:, 0].astype(cache.v_BxCxKxE.dtype), slot_BxK),
      positions_BxKxC=_put_scalars(cache.positions_BxKxC, pos_BxK, slot_BxK),
      scores_BxKxC=_put_scalars(cache.scores_BxKxC, score_BxK, slot_BxK),
      lengths_BxK=cache.lengths_BxK + grow_BxK)
  if not cache.policy.evicts:
    return cache
  C = cache.policy.capacity
  full_BxK = cache.lengths_BxK >= C
  compact = lambda c: _select(c.k_BxCxKxE, c.v_BxCxKxE, c.positions_BxKxC, c.live_BxKxC(), c.scores_BxKxC,
                              full_BxK, c.policy)
  return constrain(jax.lax.cond(jnp.any(full_BxK), compact, lambda c: c, cache))


def candidates(cache, k_BxTxKxE, v_BxTxKxE, positions_BxT, live_BxT):
  """The cache's slots followed by T new tokens: (k, v [B, C+T, K, E], positions, live [B, K, C+T]).

  Prefill attends over these (every prompt token sees its whole prefix) before `merge` packs them back."""
  B, T, K, _ = k_BxTxKxE.shape
  k = jnp.concatenate([cache.k_BxCxKxE, k_BxTxKxE.astype(cache.k_BxCxKxE.dtype)], axis=1)
  v = jnp.concatenate([cache.v_BxCxKxE, v_BxTxKxE.astype(cache.v_BxCxKxE.dtype)], axis=1)
  new_pos = jnp.broadcast_to(positions_BxT.astype(jnp.int32)[:, None, :], (B, K, T))
  pos = jnp.concatenate([cache.positions_BxKxC, new_pos], axis=-1)
  live = jnp.concatenate([cache.live_BxKxC(), jnp.broadcast_to(live_BxT[:, None, :], (B, K, T))], axis=-1)
  return k, v, pos, live


def merge(cache, k_BxNxKxE, v_BxNxKxE, positions_BxKxN, live_BxKxN, token_scores_BxKxT=None,
          attention_BxKxN=None):
  """Packs N = C + T candidates (from `candidates`) back into C slots: heads with >= C live entries keep M.
  New tokens enter with `_token_scores`; an "attention" policy's scores gain `attention_BxKxN` (`attention_mass`)."""
  B, N, K, _ = k_BxNxKxE.shape
  new_BxKxT = _token_scores(cache.policy, token_scores_BxKxT, (B, K, N - cache.scores_BxKxC.shape[-1]))
  scores = jnp.concatenate([cache.scores_BxKxC, new_BxKxT], axis=-1)
  if cache.policy.score == "attention" and attention_BxKxN is not None:
    scores = scores + attention_BxKxN
  full_BxK = live_BxKxN.sum(-1) >= cache.policy.capacity
  return constrain(_select(k_BxNxKxE, v_BxNxKxE, positions_BxKxN, live_BxKxN, scores, full_BxK, cache.policy))


def attention_mass(q_BxTxHxE, k_BxNxKxE, q_positions_BxT, kv_positions_BxKxN, keep_BxKxN, q_live_BxT=None):
  """[B, K, N] fp32: the softmax attention probability each key receives, summed over the query heads of its KV
  group and the (live) queries; causal by true positions. Plain XLA (the H2O statistic, spec "Results to report":
  computed from the XLA attention probabilities, since the fused kernels do not return them)."""
  B, T, H, E = q_BxTxHxE.shape
  K = k_BxNxKxE.shape[2]
  q_BxTxKxGxE = q_BxTxHxE.reshape(B, T, K, H // K, E).astype(jnp.float32)
  logits_BxKxGxTxN = jnp.einsum("btkge,bnke->bkgtn", q_BxTxKxGxE, k_BxNxKxE.astype(jnp.float32),
                                precision=jax.lax.Precision.HIGHEST) * E ** -0.5
  visible_BxKxTxN = keep_BxKxN[:, :, None, :] & (kv_positions_BxKxN[:, :, None, :] <= q_positions_BxT[:, None, :, None])
  logits_BxKxGxTxN = jnp.where(visible_BxKxTxN[:, :, None], logits_BxKxGxTxN, -jnp.inf)
  probs_BxKxGxTxN = jax.nn.softmax(logits_BxKxGxTxN, axis=-1)
  probs_BxKxGxTxN = jnp.where(visible_BxKxTxN[:, :, None], probs_BxKxGxTxN, 0.0)
  if q_live_BxT is not None:
    probs_BxKxGxTxN = probs_BxKxGxTxN * q_live_BxT[:, None, None, :, None]
  return probs_BxKxGxTxN.sum(axis=(2, 3))


def observe(cache, q_Bx1xHxE, positions_Bx1, live_Bx1=None):
  """After a decode step: an "attention" policy adds the step's attention probabilities to its slots' scores
  (a no-op for other policies)."""
  if cache.policy.score != "attention":
    return cache
  mass_BxKxC = attention_mass(q_Bx1xHxE, cache.k_BxCxKxE, positions_Bx1, cache.positions_BxKxC, cache.live_BxKxC(),
                              live_Bx1)
  return cache.replace(scores_BxKxC=cache.scores_BxKxC + mass_BxKxC)


def _select(k_BxNxKxE, v_BxNxKxE, positions_BxKxN, live_BxKxN, scores_BxKxN, evict_BxK, policy):
  """The C-slot cache of the kept candidates, sorted by position: all live ones where a head does not evict,
  the policy's M where it does."""
  B, N, K, _ = k_BxNxKxE.shape
  C = policy.capacity
  keep_BxKxN = live_BxKxN
  if policy.evicts:
    newest = jnp.max(jnp.where(live_BxKxN, positions_BxKxN, 0))
    inputs = PolicyInputs(positions_BxKxN, live_BxKxN, scores_BxKxN, policy.sinks,
                          jax.random.fold_in(jax.random.key(policy.seed), newest))
    idx_BxKxM = _POLICIES[policy.name](inputs, policy.budget)
    chosen_BxKxN = jax.vmap(jax.vmap(lambda i: jnp.zeros((N,), bool).at[i].set(True)))(idx_BxKxM)
    keep_BxKxN = jnp.where(evict_BxK[..., None], chosen_BxKxN & live_BxKxN, live_BxKxN)
  order_BxKxC = jnp.argsort(jnp.where(keep_BxKxN, positions_BxKxN, _NEVER), axis=-1, stable=True)[..., :C]
  take = lambda x_BxKxN: jnp.take_along_axis(x_BxKxN, order_BxKxC, axis=-1)
  order_BxCxKx1 = jnp.swapaxes(order_BxKxC, 1, 2)[..., None]
  return LayerCache(
      k_BxCxKxE=jnp.take_along_axis(k_BxNxKxE, order_BxCxKx1, axis=1),
      v_BxCxKxE=jnp.take_along_axis(v_BxNxKxE, order_BxCxKx1, axis=1),
      positions_BxKxC=take(positions_BxKxN), lengths_BxK=keep_BxKxN.sum(-1).astype(jnp.int32),
      scores_BxKxC=take(scores_BxKxN), policy=policy)
