"""A scaled-down spec §9 experiment for check 8, in process (no data pipeline): associative recall, a base LM trained
on it with full attention, gates trained on the frozen base by the trimkv objective, and streaming evaluation
under hard eviction.

Sequence (T tokens): filler tokens with `pairs` (key, value) pairs at random places, then QUERY, a key; the
answer is that key's value. Token ids: filler [0, 30), QUERY 30, keys [32, 48), values [48, 64).
Streaming evaluation feeds every token through the KV cache one at a time (decode steps), so the prediction at
the last token only sees what the policy kept — a prefill would attend over the whole prompt before evicting.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tessera.losses import registry as loss_registry
from tessera.losses.next_token import cross_entropy
from tessera.models import generate, kv_cache

FILLER, QUERY, KEYS, VALUES = 30, 30, (32, 48), (48, 64)


def make_batch(rng, B, T, pairs=4, queries=3):
  """dict of [B, T] arrays as the trainer's batches, plus `answer` [B] (the last query's value), `needed` [B, T]
  (the pairs' key/value tokens) and `answers_mask` [B, T] (positions whose target is a query's answer).

  The sequence ends with `queries` blocks (QUERY, key, value) of distinct keys; the last block's value is the
  target of the last position. Several queries give the base LM several recall targets per sequence."""
  tokens = rng.integers(0, FILLER, (B, T + 1))
  needed = np.zeros((B, T), bool)
  answers_mask = np.zeros((B, T), np.float32)
  answer = np.zeros(B, np.int64)
  region = T + 1 - 3 * queries  # pairs live in [1, region)
  for b in range(B):
    keys = rng.choice(np.arange(*KEYS), pairs, replace=False)
    values = rng.integers(*VALUES, pairs)
    slots = np.sort(rng.choice(np.arange(region // 2 - 1), pairs, replace=False)) * 2 + 1
    for key, value, at in zip(keys, values, slots):
      tokens[b, at], tokens[b, at + 1] = key, value
      needed[b, [at, at + 1]] = True
    for q, pick in enumerate(rng.choice(pairs, queries, replace=False)):
      at = region + 3 * q
      tokens[b, at], tokens[b, at + 1], tokens[b, at + 2] = QUERY, keys[pick], values[pick]
      answers_mask[b, at + 1] = 1.0  # input = the key, target = its value
      answer[b] = values[pick]
  return {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32), "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
          "loss_mask": jnp.ones((B, T), jnp.float32), "segment_ids": jnp.zeros((B, T), jnp.int32),
          "positions": jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T)), "answer": answer,
          "needed": needed, "answers_mask": jnp.asarray(answers_mask)}


def answer_only(batch):
  """The base LM learns the recall answers only (filler is unpredictable noise)."""
  return {**batch, "loss_mask": batch["answers_mask"]}


def base_loss(model, batch, rng):
  del rng
  logits = model(batch["inputs"], retention=False)
  loss, _ = cross_entropy(logits, batch["targets"], batch["loss_mask"])
  return loss, {"loss": loss}


def train(model, loss_fn, batches, *, lr, trainable, warmup=20):
  """Adam on the params whose path matches `trainable(path)`, cosine schedule; returns per-step metrics."""
  steps = len(batches)
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, lr * 0.1)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b2=0.95, weight_decay=0.0))
  graphdef, params, rest = nnx.split(model, lambda path, v: isinstance(v, nnx.Param) and trainable(path), ...)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, batch):
    (_, metrics), grads = jax.value_and_grad(
        lambda p: loss_fn(nnx.merge(graphdef, p, rest), batch, None), has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, metrics

  history = []
  for batch in batches:
    batch = {k: v for k, v in batch.items() if k not in ("answer", "needed", "answers_mask")}
    params, opt, metrics = step(params, opt, batch)
    history.append(jax.device_get(metrics))
  nnx.update(model, params)
  return history


def recall_accuracy(model, batch, policy):
  logits_BxTxV = generate.stream_logits(model, batch["inputs"], policy)
  return float(np.mean(np.asarray(jnp.argmax(logits_BxTxV[:, -1], -1)) == batch["answer"]))


def policies(budget):
  """The compared caches at budget M (StreamingLLM = 4 sinks + window, spec "Results to report")."""
  return {"trimkv": kv_cache.Policy("trimkv", budget=budget, buffer=max(1, budget // 2)),
          "sink_window": kv_cache.Policy("sink_window", budget=budget, buffer=max(1, budget // 2), sinks=4),
          "window": kv_cache.Policy("window", budget=budget, buffer=max(1, budget // 2))}


def gate_objective(memory_size):
  import ml_collections
  config = ml_collections.ConfigDict(dict(model=dict(name="trimkv"), loss=dict(name="trimkv", trimkv=dict(
      memory_size=memory_size, retention_weight=1.0, ntp_weight=1.0, capacity_norm="t"))))
  return loss_registry.get("trimkv")(config).loss_fn
