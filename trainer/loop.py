"""The training run: checks -> mesh -> data -> state (fresh, restored or --init-from) -> jitted steps -> outputs.

The loop only feeds batches, logs (one step late, so it never waits on the device just to log), evaluates and
checkpoints. Everything model-specific comes from the registries by name.
"""
import signal
import sys
import time

import jax
import numpy as np

from tessera import data as _data  # noqa: F401  (registers pipelines)
from tessera import losses as _losses  # noqa: F401  (registers objectives)
from tessera.data import registry as data_registry
from tessera.losses import registry as loss_registry
from tessera.models import registry as model_registry
from tessera.trainer import checkpoint as ckpt_lib
from tessera.trainer import config_loader
from tessera.trainer import distributed
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import metrics as metrics_lib
from tessera.trainer import optim
from tessera.trainer import regularizers
from tessera.trainer import sample as sample_lib
from tessera.trainer import state as state_lib
from tessera.trainer import step as step_lib
from tessera.trainer import validate
from tessera.trainer import workdir as workdir_lib
from tessera.trainer.config_loader import ConfigError


class NonFiniteLoss(RuntimeError):
  pass


class Stopped(RuntimeError):
  """SIGTERM/SIGINT: the state was saved; rerunning resumes."""


def log(message):
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


class Run:
  """One run in one workdir. `setup()` builds everything (nothing written); `train()` writes and trains."""

  def __init__(self, config, workdir, init_from=None):
    self.config, self.workdir, self.init_from = config, ckpt_lib.absolute(workdir), init_from
    self.config_dict = config_loader.to_dict(config)
    self.latest = ckpt_lib.latest_step(self.workdir)

  def finished(self):
    return self.latest is not None and self.latest >= self.config.train.steps

  def setup(self):
    """Every check and every heavy build; raises ConfigError before anything is written."""
    c = self.config
    if self.init_from and self.latest is not None:
      raise ConfigError(f"--init-from: {self.workdir} already has checkpoints (step {self.latest}); "
                        "use a fresh --workdir")
    self.data = build_pipeline(c)
    resolve_vocab_size(c, self.data.vocab_size)
    self.config_dict = config_loader.to_dict(c)
    self.changes = workdir_lib.check_resume(self.workdir, self.config_dict) if self.latest is not None else {}
    validate.validate(c, jax.device_count())
    self.mesh = mesh_lib.make_mesh(c)
    self.factory = state_lib.StateFactory(c, self.mesh)
    self.loss_fn = _registered(loss_registry, c.loss.name)(c.loss)
    self.batch_sharding = mesh_lib.batch_sharding(self.mesh)
    self.rows = mesh_lib.local_rows(self.batch_sharding, c.train.batch_size)
    if jax.process_count() > 1:
      print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} devices, rows "
            f"{self.rows.start}:{self.rows.stop} of each global batch of {c.train.batch_size}", file=sys.stderr,
            flush=True)
    self.source_params = None
    if self.init_from:
      source = ckpt_lib.Checkpointer(self.init_from, c.checkpoint)
      step = source.latest_step()
      if step is None:
        raise ConfigError(f"--init-from: {self.init_from} has no checkpoints")
      self._check_shapes(source, step, f"--init-from {self.init_from}")
      self.source_params = source.restore_params(step, self.factory.abstract_params_sharded())
      source.close()
      log(f"initialised params from {self.init_from} step {step}")
    self.ckpt = ckpt_lib.Checkpointer(self.workdir, c.checkpoint)
    if self.latest is not None:
      self._check_shapes(self.ckpt, self.latest, str(self.workdir))
    return self

  def _check_shapes(self, checkpointer, step, where):
    saved = checkpointer.saved_shapes(step)["params"]
    want = self.factory.abstract_params
    saved_flat = {optim.path_str(p): tuple(getattr(leaf, "shape", ())) for p, leaf in _flat(saved)}
    for path, leaf in _flat(want):
      key = optim.path_str(path)
      if saved_flat.get(key) != tuple(leaf.shape):
        raise ConfigError(f"{where}: parameter {key} has shape {saved_flat.get(key)} in the checkpoint but "
                          f"{tuple(leaf.shape)} in this config (model shape changed)")

  def global_batch(self, local):
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, v,
                                                      (self.config.train.batch_size,) + v.shape[1:])
            for k, v in local.items()}

  def _start_state(self):
    """(state, data position): restored from the latest checkpoint, from --init-from params, or fresh."""
    if self.latest is not None:
      state, position = self.ckpt.restore(self.latest, self.factory.abstract_state())
      log(f"resumed from step {self.latest}" + "".join(f"\n  changed {k}: {a!r} -> {b!r}"
                                                       for k, (a, b) in self.changes.items()))
      return state, position
    if self.source_params is not None:
      return self.factory.from_params(self.source_params, jax.random.key(self.config.seed)), {"next_batch": 0}
    return self.factory.init(self.config.seed), {"next_batch": 0}

  def train(self):
    c, factory = self.config, self.factory
    state, position = self._start_state()
    start = int(state["step"])

    distributed.barrier("setup")  # every process validated and built the same run before process 0 writes
    self.writer = metrics_lib.Writer(self.workdir)
    if jax.process_index() == 0:
      workdir_lib.write_json(self.workdir / "config.json", self.config_dict)
      self.writer.text("config", "```\n" + c.to_json(indent=2) + "\n```", start)
      if self.changes:
        self.writer.text("config_changes", "\n".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in self.changes.items()),
                         start)
    counts = model_accounting(factory, c)
    flops_per_token = counts["train_flops_per_token"]
    peak = metrics_lib.peak_flops_per_device(c.model.dtype)
    log(f"{jax.device_count()} devices, mesh {dict(self.mesh.shape)}; " + ", ".join(
        f"{k} {v:,.0f}" for k, v in counts.items()) + f"; peak {peak / 1e9:.1f} GFLOP/s/device")
    self.writer.text("accounting", "\n".join(f"{k}: {v:,.0f}" for k, v in counts.items()), start)

    train_step = step_lib.make_train_step(factory, self.loss_fn)
    eval_step = step_lib.make_eval_step(factory, self.loss_fn)
    eval_batches = [self.global_batch(b) for b in self.data.eval_batches(c.eval.batches, self.rows)]
    batches = self.data.train_batches(position["next_batch"], self.rows)
    tokens_per_step = c.train.batch_size * c.train.seq_len
    progress = metrics_lib.Progress(c.train.steps, start, max(c.train.steps // 20, 1))

    stop_signal = []
    handlers = {s: signal.signal(s, lambda signum, _: stop_signal.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    pending, last_time, last_save_time = None, time.perf_counter(), time.perf_counter()
    self.step_times, self.save_seconds = {}, {}
    paused = [0.0]  # seconds spent in eval/checkpointing since the last report: not step time
    summary = {"step": start, "train_loss": None, "eval_loss": None, "tokens_per_second": None, "mfu": None}

    def report(pending_metrics):
      nonlocal last_time
      step, device_metrics = pending_metrics
      values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
      if not metrics_lib.is_finite({k: values[k] for k in ("loss", "grad_norm")}):
        raise NonFiniteLoss(f"non-finite loss {values['loss']} (grad norm {values['grad_norm']}) at step {step}; "
                            f"last good checkpoint: step {self.ckpt.latest_step()} (intact)")
      now = time.perf_counter()
      step_time, last_time = now - last_time - paused[0], now
      paused[0] = 0.0
      self.step_times[step] = step_time
      tps = tokens_per_step / step_time
      values.update(step_time=step_time, tokens_per_second=tps,
                    tflops_per_device=flops_per_token * tps / jax.device_count() / 1e12,
                    mfu=flops_per_token * tps / (peak * jax.device_count()))
      memory = metrics_lib.device_memory_gb()
      if memory is not None:
        values["memory_gb"] = memory
      self.writer.scalars(step, values, "train")
      progress.update(step, values["loss"], tps)
      summary.update(step=step, train_loss=values["loss"], tokens_per_second=tps, mfu=values["mfu"])

    def evaluate(step):
      began = time.perf_counter()
      results = [jax.device_get(eval_step(state["params"], b)) for b in eval_batches]
      loss = float(np.mean([r["loss"] for r in results]))
      self.writer.scalars(step, {"loss": loss}, "eval")
      log(f"step {step}: eval loss {loss:.4f}")
      summary["eval_loss"] = loss
      summary.update(regularizers.log_weight_stats(self.writer, step, state["params"], c))
      paused[0] += time.perf_counter() - began

    def save(step):
      nonlocal last_save_time
      began = time.perf_counter()
      self.writer.flush()  # events on disk before the checkpoint that covers them commits
      self.ckpt.save(step, state, {"next_batch": position["next_batch"] + step - start})
      last_save_time = time.perf_counter()
      self.save_seconds[step] = last_save_time - began  # how long the (async) save held up the loop
      paused[0] += last_save_time - began

    try:
      profiling = False
      for step in range(start + 1, c.train.steps + 1):
        if step == c.profile.start_step:
          jax.profiler.start_trace(str(self.workdir / "profile"))
          profiling = True
        state, device_metrics = train_step(state, self.global_batch(next(batches)))
        if pending:
          report(pending)
        pending = (step, device_metrics)
        if profiling and step == c.profile.start_step + c.profile.num_steps - 1:
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
          profiling = False
        due = (c.checkpoint.every_steps and step % c.checkpoint.every_steps == 0) or step == c.train.steps or (
            c.checkpoint.every_seconds and time.perf_counter() - last_save_time >= c.checkpoint.every_seconds)
        if due or stop_signal:
          report(pending)
          pending = None
          save(step)
        if (c.eval.every_steps and step % c.eval.every_steps == 0) or step == c.train.steps:
          evaluate(step)
        if stop_signal:
          raise Stopped(f"stopped by signal {stop_signal[0]} at step {step}; checkpoint saved, rerun to resume")
      if pending:
        report(pending)
    finally:
      for s, h in handlers.items():
        signal.signal(s, h)
      self.ckpt.close()
      self.writer.flush()

    progress.update(summary["step"], summary["train_loss"], summary["tokens_per_second"] or 0.0, force=True)
    self._finish(state["params"], summary)
    return summary

  def _finish(self, params, summary):
    """A greedy sample and summary.json. Every process samples (params are sharded over all); process 0 writes."""
    c = self.config
    text = sample_lib.generate(self.factory, params, self.data.tokenizer, c.sample.prompt, c.sample.max_new_tokens,
                               c.train.seq_len, temperature=c.sample.temperature)
    if jax.process_index() == 0:
      self.writer.text("sample", text, summary["step"])
      summary["unigram_entropy"] = self.data.unigram_entropy_nats()
      workdir_lib.write_json(self.workdir / "summary.json", summary)
      print(f"sample: {c.sample.prompt!r} -> {text!r}", flush=True)
      print(f"done: step {summary['step']}, train loss {summary['train_loss']:.4f}, eval loss "
            f"{summary['eval_loss']:.4f} (unigram entropy {summary['unigram_entropy']:.4f}), "
            f"{summary['tokens_per_second']:.0f} tokens/s, MFU {summary['mfu']:.1%}", flush=True)
    self.writer.close()


def build_pipeline(c):
  """The config's data pipeline; a builder's ValueError (bad path, file, row) is a one-line input error."""
  builder = _registered(data_registry, data_registry.name_for(c.data))
  try:
    return builder(c.data, seq_len=c.train.seq_len, global_batch_size=c.train.batch_size, seed=c.seed)
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(str(e).splitlines()[0]) from None


def resolve_vocab_size(c, tokenizer_vocab):
  """model.vocab_size=0 takes the tokenizer's size padded to a multiple of 128. An explicit size must agree with
  the tokenizer: equal to it, or a padding of it to a multiple of 128."""
  explicit = c.model.vocab_size
  if explicit == 0:
    with c.unlocked():
      c.model.vocab_size = -(-tokenizer_vocab // 128) * 128
  elif explicit < tokenizer_vocab or (explicit != tokenizer_vocab and explicit % 128):
    raise ConfigError(f"config key 'model.vocab_size': {explicit} disagrees with the tokenizer's vocabulary "
                      f"({tokenizer_vocab}); use 0 (derive it), {tokenizer_vocab} or a multiple of 128 above it")


def _registered(registry, name):
  try:
    return registry.get(name)
  except KeyError as e:
    raise ConfigError(e.args[0]) from None


def _flat(tree):
  return jax.tree_util.tree_flatten_with_path(tree)[0]


def param_total(factory):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(factory.abstract_params))


def model_accounting(factory, config):
  """The model's registered counts (params, FLOPs per token) or 6 x params when it registers none."""
  fn = model_registry.ACCOUNTING.get(config.model.name)
  if fn is not None:
    return dict(fn(config.model, config.train.seq_len))
  total = param_total(factory)
  return {"params_total": total, "train_flops_per_token": 6.0 * total}
