"""One generation engine for every LM in the zoo: a jitted prefill over the prompt batch, then one jitted decode step
per token over a KV cache (tessera.models.kv_cache), with greedy / temperature / top-k / top-p sampling and an eos stop.

The engine knows no trainer: it takes an NNX LM (`model(tokens_BxT, positions_BxT=, cache=, live_BxT=)` returning
(logits, cache), plus `model.init_cache(batch, policy)`: decoder.Decoder and its subclasses) and token ids. Run it
under the model's mesh and logical-axis rules and the cache is sharded like the activations (kv_cache.constrain).
Prompts of different lengths share one batch: they are right-padded, each row decodes at its own true positions.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from tessera.models import kv_cache

_EOS_CHECK_EVERY = 8  # decode steps between host checks of "every row hit eos" (each check waits on the device)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is drawn (hashable: a jit static argument). temperature 0 is greedy; top_k 0 and top_p 1
  are off; `eos_id` stops a row (it is not part of the output); `seed` makes sampling reproducible, per row."""
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  eos_id: int | None = None

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0 (got {self.temperature})")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (got {self.top_k})")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1] (got {self.top_p})")


class Output(NamedTuple):
  tokens: list  # per prompt: the new token ids, cut before the first eos
  logits_BxNxV: np.ndarray | None  # per-step float32 logits of the prompts' rows (return_logits=True)
  cache: kv_cache.KVCache  # the cache after the last step (padding rows included)


def sample_logits(logits_BxV, key, sampling):
  """Next tokens [B] int32. Row b draws with fold_in(key, b), so a row's sample does not depend on the batch."""
  if sampling.temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  x_BxV = logits_BxV.astype(jnp.float32) / sampling.temperature
  if sampling.top_k:
    kth_Bx1 = jax.lax.top_k(x_BxV, min(sampling.top_k, x_BxV.shape[-1]))[0][:, -1:]
    x_BxV = jnp.where(x_BxV < kth_Bx1, -jnp.inf, x_BxV)
  if sampling.top_p < 1:
    sorted_BxV = -jnp.sort(-x_BxV, axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass strictly above each token: the first always stays
    cut_Bx1 = jnp.min(jnp.where(before_BxV < sampling.top_p, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    x_BxV = jnp.where(x_BxV < cut_Bx1, -jnp.inf, x_BxV)
  keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(x_BxV.shape[0]))
  return jax.vmap(jax.random.categorical)(keys, x_BxV).astype(jnp.int32)


def _vocab_only(logits_BxV, vocab_size):
  """Logits of the padding ids (>= the tokenizer's vocabulary) set to -inf: never sampled."""
  if vocab_size is None or vocab_size >= logits_BxV.shape[-1]:
    return logits_BxV
  return jnp.where(jnp.arange(logits_BxV.shape[-1]) < vocab_size, logits_BxV, -jnp.inf)


def _replicated(x):
  """Small outputs (tokens, logits, done flags) replicated, so every process can read them."""
  if jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, P())


@functools.partial(jax.jit, static_argnames=("graphdef", "policy", "vocab_size", "sampling"))
def _prefill(graphdef, state, tokens_BxP, lengths_B, key, model_kwargs, *, policy, vocab_size, sampling):
  model = nnx.merge(graphdef, state)
  B, T = tokens_BxP.shape
  positions_BxP = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  live_BxP = positions_BxP < lengths_B[:, None]
  cache = model.init_cache(B, policy)
  logits_BxPxV, cache = model(tokens_BxP, positions_BxT=positions_BxP, cache=cache, live_BxT=live_BxP,
                              **model_kwargs)
  logits_BxV = jnp.take_along_axis(logits_BxPxV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
  logits_BxV = _vocab_only(logits_BxV.astype(jnp.float32), vocab_size)
  token_B = sample_logits(logits_BxV, jax.random.fold_in(key, 0), sampling)
  done_B = jnp.zeros((B,), bool) if sampling.eos_id is None else token_B == sampling.eos_id
  return _replicated(token_B), _replicated(logits_BxV), cache, _replicated(done_B)


@functools.partial(jax.jit, static_argnames=("graphdef", "vocab_size", "sampling", "step_kwargs"),
                   donate_argnames=("cache",))
def _decode(graphdef, state, cache, token_B, positions_B, done_B, key, step, *, vocab_size, sampling, step_kwargs):
  model = nnx.merge(graphdef, state)
  tokens_Bx1 = token_B[:, None]
  kwargs = step_kwargs(tokens_Bx1) if step_kwargs is not None else {}
  logits_Bx1xV, cache = model(tokens_Bx1, positions_BxT=positions_B[:, None], cache=cache, **kwargs)
  logits_BxV = _vocab_only(logits_Bx1xV[:, 0].astype(jnp.float32), vocab_size)
  next_B = sample_logits(logits_BxV, jax.random.fold_in(key, step), sampling)
  if sampling.eos_id is not None:
    next_B = jnp.where(done_B, sampling.eos_id, next_B)
    done_B = done_B | (next_B == sampling.eos_id)
  return _replicated(next_B), _replicated(logits_BxV), cache, _replicated(done_B)


def pad_prompts(prompts, multiple=1):
  """(tokens_BxP int32, lengths_B int32) right-padded with 0; rows repeat prompt 0 up to a multiple of `multiple`
  (the mesh's batch split). Every prompt needs at least one token."""
  prompts = [list(map(int, p)) for p in prompts]
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  rows = -(-len(prompts) // multiple) * multiple
  prompts = prompts + [prompts[0]] * (rows - len(prompts))
  lengths_B = np.array([len(p) for p in prompts], np.int32)
  tokens_BxP = np.zeros((rows, lengths_B.max()), np.int32)
  for b, p in enumerate(prompts):
    tokens_BxP[b, :len(p)] = p
  return tokens_BxP, lengths_B


def _fit(x_BxT, shape):
  """A per-prompt model argument [n_prompts, T, ...] fitted to the padded batch: rows repeat row 0 (as
  `pad_prompts`), positions past T are zeros (padding, never attended)."""
  rows, P = shape
  x_BxT = np.concatenate([x_BxT, np.repeat(x_BxT[:1], rows - x_BxT.shape[0], axis=0)])
  pad = [(0, 0), (0, P - x_BxT.shape[1])] + [(0, 0)] * (x_BxT.ndim - 2)
  return np.pad(x_BxT, pad)


class Engine:
  """Compiled prefill and decode around one model; `generate` is the whole loop.

  `vocab_size`: the tokenizer's vocabulary when the model's is padded (ids above are never sampled).
  """

  def __init__(self, model, vocab_size=None):
    self.graphdef, self.state = nnx.split(model)
    self.vocab_size = vocab_size

  def prefill(self, tokens_BxP, lengths_B, policy, sampling=Sampling(), model_kwargs=None):
    """(first new token [B], its logits [B, V], cache, done [B]) after the prompts; `policy` must be resolved."""
    return _prefill(self.graphdef, self.state, jnp.asarray(tokens_BxP), jnp.asarray(lengths_B),
                    jax.random.key(sampling.seed), model_kwargs or {}, policy=policy, vocab_size=self.vocab_size,
                    sampling=sampling)

  def decode(self, cache, token_B, positions_B, done_B, step, sampling=Sampling(), step_kwargs=None):
    """Feeds `token_B` at `positions_B`: (next token, its logits, cache, done). `cache` is donated."""
    return _decode(self.graphdef, self.state, cache, token_B, jnp.asarray(positions_B), done_B,
                   jax.random.key(sampling.seed), step, vocab_size=self.vocab_size, sampling=sampling,
                   step_kwargs=step_kwargs)

  def generate(self, prompts, max_new_tokens, *, policy=kv_cache.Policy(), sampling=Sampling(),
               return_logits=False, prefill_kwargs=None, step_kwargs=None):
    """Continues every prompt (a list of token-id lists, one batch) by up to `max_new_tokens` tokens.

    `prefill_kwargs`: extra model arguments for the prompt batch (arrays [B, P, ...] matching `pad_prompts`, e.g.
    STEM's stem_ids_BxT); `step_kwargs(tokens_Bx1) -> dict`: extra model arguments at each decode step (traced;
    pass the same function object to reuse the compiled step).
    """
    if max_new_tokens <= 0:
      raise ValueError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")
    n_prompts = len(prompts)
    tokens_BxP, lengths_B = pad_prompts(prompts, kv_cache.batch_multiple())
    policy = policy.resolve(tokens_BxP.shape[1], max_new_tokens)
    prefill_kwargs = jax.tree.map(lambda x: _fit(np.asarray(x), tokens_BxP.shape), prefill_kwargs or {})
    token_B, logits_BxV, cache, done_B = self.prefill(tokens_BxP, lengths_B, policy, sampling, prefill_kwargs)
    tokens, logits = [token_B], [logits_BxV]
    for i in range(1, max_new_tokens):
      if sampling.eos_id is not None and i % _EOS_CHECK_EVERY == 0 and bool(done_B.all()):
        break
      token_B, logits_BxV, cache, done_B = self.decode(cache, token_B, lengths_B + i - 1, done_B, i, sampling,
                                                       step_kwargs)
      tokens.append(token_B)
      if return_logits:
        logits.append(logits_BxV)
    tokens_BxN = np.stack(jax.device_get(tokens), axis=1)[:n_prompts]
    out = []
    for row in tokens_BxN.tolist():
      if sampling.eos_id is not None and sampling.eos_id in row:
        row = row[:row.index(sampling.eos_id)]
      out.append(row)
    logits_BxNxV = np.stack(jax.device_get(logits), axis=1)[:n_prompts] if return_logits else None
    return Output(out, logits_BxNxV, cache)


def generate(model, prompts, max_new_tokens, *, vocab_size=None, **kwargs) -> Output:
  """`Engine(model, vocab_size).generate(prompts, max_new_tokens, **kwargs)`."""
  return Engine(model, vocab_size).generate(prompts, max_new_tokens, **kwargs)


def recompute_logits(model, tokens_BxT, **model_kwargs):
  """The cache-free reference: one causal forward over prompt + generated tokens; position t's logits are what
  step t of a full-cache generation must produce (tests, bench)."""
  graphdef, state = nnx.split(model)
  return _recompute(graphdef, state, jnp.asarray(tokens_BxT), model_kwargs)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _recompute(graphdef, state, tokens_BxT, model_kwargs):
  return nnx.merge(graphdef, state)(tokens_BxT, **model_kwargs)



def stream_logits(model, tokens_BxT, policy):
  """Logits [B, T, V] of feeding every token through the cache one decode step at a time (teacher forcing): the
  prediction at position t sees only what `policy` kept of tokens 0..t. A prefill would attend over the whole
  prompt before evicting, so hard-eviction evaluations (scripts/eval_kv) stream instead."""
  policy = policy.resolve(1, tokens_BxT.shape[1])
  return _stream(*nnx.split(model), jnp.asarray(tokens_BxT), policy)


@functools.partial(jax.jit, static_argnames=("graphdef", "policy"))
def _stream(graphdef, state, tokens_BxT, policy):
  model = nnx.merge(graphdef, state)
  B, T = tokens_BxT.shape

  def body(cache, token_and_pos):
    token_B, pos = token_and_pos
    logits_Bx1xV, cache = model(token_B[:, None], positions_BxT=jnp.full((B, 1), pos, jnp.int32), cache=cache)
    return cache, logits_Bx1xV[:, 0].astype(jnp.float32)

  _, logits_TxBxV = jax.lax.scan(body, model.init_cache(B, policy), (tokens_BxT.T, jnp.arange(T)))
  return jnp.swapaxes(logits_TxBxV, 0, 1)
