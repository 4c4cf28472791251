"""The train section of bench_gpu.py: a ~1B dense decoder (tessera.models + optax), 10 steps, step time and MFU.

Built without the trainer: the GPU host has jax, flax and optax but not ml_collections, grain or tensorboardX, so
the model config is a plain dict (with attribute access, which the model code reads) and the batch is synthetic:
packed documents (segment ids and per-document positions, as the data pipeline yields them) of random tokens.
FLOPs per token are the trainer's (tessera.models.decoder.train_flops_per_token: PaLM convention, full attention
matrix); MFU is against the dense bf16 peak of the chip (989 TFLOP/s for H100/H200, kernels.md 10).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tessera.models import decoder


class DictConfig(dict):
  """A plain dict whose keys read as attributes (`cfg.d_model`, `cfg.get("qk_norm")`), as the model code expects."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None


def model_config(smoke, attention_impl):
  """~1.1B parameters on GPU (16 layers of d_model 2048, d_ff 8192, GQA 16/8, untied 32k vocabulary)."""
  size = (dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128) if smoke else
          dict(vocab_size=32768, d_model=2048, n_layers=16, n_heads=16, n_kv_heads=8, d_ff=8192))
  return DictConfig(name="decoder", head_dim=0, rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=False,
                    dtype="bfloat16", param_dtype="float32", remat="none", scan_layers=True,
                    attention_impl=attention_impl, init="normal", init_std=0.02, **size)


def packed_batch(batch, seq_len, vocab, docs_per_row, seed=0):
  """tokens [B, T+1] and the segment ids / positions of the T inputs: `docs_per_row` documents of random lengths."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (batch, seq_len + 1), dtype=np.int32)
  cuts = np.sort(rng.choice(np.arange(1, seq_len), (batch, docs_per_row - 1), replace=False), axis=1)
  seg = (np.arange(seq_len)[None, :, None] >= cuts[:, None, :]).sum(-1).astype(np.int32)
  starts = np.where(seg == 0, 0, np.take_along_axis(cuts, np.maximum(seg - 1, 0), axis=1))
  return jnp.asarray(tokens), jnp.asarray(seg), jnp.asarray(np.arange(seq_len)[None] - starts, dtype=jnp.int32)


def make_step(graphdef, rest, optimizer, with_segments):
  def loss_fn(params, tokens, seg, pos):
    model = nnx.merge(graphdef, params, rest)
    logits = model(tokens[:, :-1], segment_ids_BxT=seg if with_segments else None, positions_BxT=pos)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  @jax.jit
  def step(params, opt_state, tokens, seg, pos):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, seg, pos)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def train_row(name, attention, with_segments, *, smoke, peak_flops, steps=10):
  cfg = model_config(smoke, attention)
  batch, seq_len = (2, 64) if smoke else (8, 2048)
  with nnx.use_eager_sharding(False):
    model = decoder.build(cfg, nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizer = optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1)
  opt_state = optimizer.init(params)
  step = make_step(graphdef, rest, optimizer, with_segments)
  tokens, seg, pos = packed_batch(batch, seq_len, cfg.vocab_size, docs_per_row=4)
  start = time.perf_counter()
  params, opt_state, loss = step(params, opt_state, tokens, seg, pos)
  first = float(loss)  # blocks: compile + first step
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps - 1):
    params, opt_state, loss = step(params, opt_state, tokens, seg, pos)
  last = float(loss)
  step_s = (time.perf_counter() - start) / (steps - 1)
  tokens_per_step = batch * seq_len
  flops = decoder.train_flops_per_token(cfg, seq_len) * tokens_per_step
  return dict(section="train", name=name, attention=attention, segments=with_segments,
              params=decoder.param_count(cfg)["total"], tokens_per_step=tokens_per_step, steps=steps,
              compile_s=compile_s, step_ms=1e3 * step_s, tokens_per_s=tokens_per_step / step_s,
              tflops=flops / step_s / 1e12, mfu=flops / step_s / peak_flops if peak_flops else None,
              loss_first=first, loss_last=last)


def train_rows(*, smoke, min_seconds, peak_flops, seconds_left):
  """Packed documents through our Pallas kernel (the training path: batches carry segment ids) first; then, if
  the first took under half the time left, the same step without segment ids, where `auto` picks cuDNN on a GPU."""
  del min_seconds  # the step count, not a duration, fixes this measurement
  start, rows = time.perf_counter(), []
  for name, attention, with_segments in (("packed", "pallas", True), ("unpacked", "auto", False)):
    if rows and not smoke and time.perf_counter() - start > seconds_left / 2:
      rows.append(dict(section="train", name=name, attention=attention, skipped=True))
      continue
    try:
      rows.append(train_row(name, attention, with_segments, smoke=smoke, peak_flops=peak_flops))
    except Exception as e:
      rows.append(dict(section="train", name=name, attention=attention, error=f"{type(e).__name__}: {e}"[:200]))
  return rows
