"""The training run: checks -> mesh -> data -> state (fresh, restored or init.workdir) -> jitted steps -> outputs.

The loop only feeds batches, logs (one step late, so it never waits on the device just to log), evaluates and
checkpoints. Everything method-specific comes from the registries by name (tessera.trainer.zoo).
"""
import shutil
import signal
import sys
import time

import jax
import numpy as np

from tessera import data as _data  # noqa: F401  (registers pipelines)
from tessera.data import registry as data_registry
from tessera.models import registry as model_registry
from tessera.trainer import agreement as agreement_lib
from tessera.trainer import checkpoint as ckpt_lib
from tessera.trainer import config_loader
from tessera.trainer import distributed
from tessera.trainer import init_from
from tessera.trainer import memory_check
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import metrics as metrics_lib
from tessera.trainer import optim
from tessera.trainer import sample as sample_lib
from tessera.trainer import state as state_lib
from tessera.trainer import step as step_lib
from tessera.trainer import validate
from tessera.trainer import workdir as workdir_lib
from tessera.trainer import zoo
from tessera.trainer.config_loader import ConfigError


class NonFiniteLoss(RuntimeError):
  pass


class Stopped(RuntimeError):
  """SIGTERM/SIGINT: the state was saved; rerunning resumes."""


def log(message):
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


class Clock:
  """Step time between reports, minus the seconds spent in eval and checkpointing."""

  def __init__(self):
    self.last, self.paused = time.perf_counter(), 0.0

  def lap(self):
    now = time.perf_counter()
    seconds, self.last, self.paused = now - self.last - self.paused, now, 0.0
    return seconds

  def pause_since(self, began):
    self.paused += time.perf_counter() - began


class StopSignals:
  """Records SIGTERM/SIGINT while training (the loop saves and stops at the next step boundary)."""

  def __enter__(self):
    self.received = []
    self.previous = {s: signal.signal(s, lambda signum, _: self.received.append(signum))
                     for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def __exit__(self, *exc):
    for s, handler in self.previous.items():
      signal.signal(s, handler)


class Run:
  """One run in one workdir. `setup()` builds everything (nothing written); `train()` writes and trains."""

  def __init__(self, config, workdir, init_from_flag=None):
    self.config, self.workdir = config, ckpt_lib.absolute(workdir)
    workdir_lib.check_writable(self.workdir)  # before reading checkpoints/: it may be a file
    self.init_from_flag = init_from_flag
    self.config_dict = config_loader.to_dict(config)
    self.latest = ckpt_lib.latest_step(self.workdir)

  def finished(self):
    """At train.steps with summary.json written. A run killed after its last checkpoint but before its summary is
    not finished: a rerun runs the finish step (final eval, sample, summary.json)."""
    if self.latest is None or self.latest < self.config.train.steps:
      return False
    summary = self.workdir / "summary.json"
    return summary.exists() and workdir_lib.read_json(summary).get("step", -1) >= self.latest

  # ---- setup: every check and every heavy build; raises ConfigError before anything is written ----

  def setup(self):
    c = self.config
    if self.init_from_flag and self.latest is not None:
      raise ConfigError(f"--init-from: {self.workdir} already has checkpoints (step {self.latest}); "
                        "use a fresh --workdir")
    validate.validate(c)
    zoo.check(c)
    if self.latest is None:
      workdir_lib.check_fresh(self.workdir)
    self.data = build_pipeline(c, self.workdir)
    # a resumed run, or one whose weights come from another run (e.g. an imported checkpoint), keeps its size
    resolve_vocab_size(c, self.data.vocab_size, inherited=self.latest is not None or bool(c.init.workdir))
    self.config_dict = config_loader.to_dict(c)
    self.changes = workdir_lib.check_resume(self.workdir, self.config_dict) if self.latest is not None else {}
    validate.validate(c, jax.device_count())
    zoo.check(c)  # again: now with the resolved vocabulary size
    self.mesh = mesh_lib.make_mesh(c)
    self.factory = state_lib.StateFactory(c, self.mesh)
    self.batch_sharding = mesh_lib.batch_sharding(self.mesh)
    self.rows = mesh_lib.local_rows(self.batch_sharding, c.train.batch_size)
    if jax.process_count() > 1:
      print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} devices, rows "
            f"{self.rows.start}:{self.rows.stop} of each global batch of {c.train.batch_size}", file=sys.stderr,
            flush=True)
    self.init_plan = None
    if self.latest is None and c.init.workdir:
      self.init_plan = init_from.Plan(c, self.factory)
    self.train_step = self._compile_train_step()  # refuses a shape that cannot fit (train.memory_budget_gb)
    self.ckpt = ckpt_lib.Checkpointer(self.workdir, c.checkpoint)
    if self.latest is not None:
      self._check_shapes(self.ckpt, self.latest, str(self.workdir))
    return self

  def _compile_train_step(self):
    """The train step compiled ahead of time on abstract inputs: its memory is checked before anything is written
    and the loop runs this executable (no second compile)."""
    example = self.data.eval_batches(1, self.rows)[0]
    batch = {k: jax.ShapeDtypeStruct((self.config.train.batch_size,) + v.shape[1:], v.dtype,
                                     sharding=self.batch_sharding) for k, v in example.items()}
    with self.factory.context():
      return memory_check.compile_checked(step_lib.make_train_step(self.factory), self.factory.abstract_state(),
                                          batch, self.config)

  def _check_shapes(self, checkpointer, step, where):
    try:
      saved = checkpointer.saved_shapes(step)
    except ckpt_lib.CorruptCheckpoint:
      return  # unreadable metadata: the restore reports it, moves the step aside and falls back
    saved_flat = {}
    for tree in state_lib.TREES:
      saved_flat.update({optim.path_str(p): tuple(getattr(leaf, "shape", ())) for p, leaf in _flat(saved.get(tree, {}))})
    for tree in state_lib.TREES:
      for path, leaf in _flat(getattr(self.factory, f"abstract_{tree}")):
        key = optim.path_str(path)
        if saved_flat.get(key) != tuple(leaf.shape):
          raise ConfigError(f"{where}: parameter {key} has shape {saved_flat.get(key)} in the checkpoint but "
                            f"{tuple(leaf.shape)} in this config (model shape or train.trainable changed)")

  # ---- train: a readable loop of small named steps ----

  def train(self):
    c = self.config
    state, self.position = self._start_state()
    self.start = int(state["step"])
    self._open_outputs()
    self.eval_step = step_lib.make_eval_step(self.factory)
    self.eval_batches = [self.global_batch(b) for b in self.data.eval_batches(c.eval.batches, self.rows)]
    batches = self.data.train_batches(self.position["next_batch"], self.rows)
    self.progress = metrics_lib.Progress(c.train.steps, self.start, c.train.log_every_steps)
    self.clock, self.pending, self.last_save_time = Clock(), None, time.perf_counter()
    self.agreement = None
    if jax.process_count() > 1:  # clock and signal decisions agreed across processes (single process: none)
      self.agreement = agreement_lib.Agreement(self.mesh, c.train.batch_size, self.rows)
    self.step_times, self.save_seconds = {}, {}
    self.summary = {"step": self.start, "train_loss": None, "eval_loss": None, "tokens_per_second": None,
                    "mfu": None}
    try:
      with StopSignals() as signals:
        for step in range(self.start + 1, c.train.steps + 1):
          self._profile(step, starting=True)
          state, device_metrics = self.train_step(state, self.global_batch(next(batches)))
          self._report_pending()
          self.pending = (step, device_metrics)
          self._profile(step, starting=False, state=state)
          time_due, stop = self._agreed(signals)
          if self._step_due(step) or time_due or stop:
            self._report_pending()
            self._save(step, state)
          if self._eval_due(step):
            self._report_pending()  # before eval: its wait on the device would otherwise hide this step's time
            self._evaluate(step, state)
          if stop:
            cause = f"signal {signals.received[0]}" if signals.received else "a signal to another process"
            raise Stopped(f"stopped by {cause} at step {step}; checkpoint saved, rerun to resume")
          self._offer(signals)
        self._report_pending()
      if self.start >= c.train.steps:  # a rerun of a run that stopped before its finish step
        self._recover_last_metrics()
        self._evaluate(self.start, state)
    except BaseException:
      self.progress.close()
      self.writer.close()  # syncs metrics.jsonl: every reported step stays on disk
      raise
    finally:
      self.ckpt.close()
    self.progress.close()
    self._finish(state)
    return self.summary

  def _start_state(self):
    """(state, data position): restored from the latest checkpoint, from init.workdir params, or fresh."""
    if self.latest is not None:
      try:
        found = self.ckpt.restore_latest(self.factory.abstract_state())
      except ckpt_lib.CheckpointMismatch as e:
        raise ConfigError(f"{self.workdir}: {e}") from None
      if found is not None:  # the newest intact step (corrupt newer ones were reported and moved aside)
        self.latest, state, position = found
        log(f"resumed from step {self.latest}" + "".join(f"\n  changed {k}: {a!r} -> {b!r}"
                                                         for k, (a, b) in self.changes.items()))
        return state, position
      log(f"no intact checkpoint left in {self.workdir}; starting from step 0")
      self.latest = None
    state = self.factory.init(self.config.seed)
    if self.init_plan is not None:
      params, frozen = self.init_plan.load(state["params"], state["frozen"])
      state = self.factory.from_variables(params, frozen, state["model_state"],
                                          jax.random.fold_in(jax.random.key(self.config.seed), 1))
      report = self.init_plan.report()
      log(f"initialised {len(report['loaded'])} params from {report['source']} step {report['step']}; "
          f"{len(report['fresh'])} fresh, {len(report['unused_source'])} source params unused (init.json)")
    return state, {"next_batch": 0}

  def _open_outputs(self):
    """Every process built the same run before process 0 writes config.json, init.json and the accounting."""
    c = self.config
    distributed.barrier("setup")
    flat = config_loader.flatten(self.config_dict)
    self.writer = metrics_lib.Writer(self.workdir, resume_step=self.start,
                                     wandb_config=flat if flat.get("metrics.wandb") else None)
    if jax.process_index() == 0:
      workdir_lib.write_json(self.workdir / "config.json", self.config_dict)
      if self.init_plan is not None:
        workdir_lib.write_json(self.workdir / "init.json", self.init_plan.report())
      self.writer.text("config", "```\n" + c.to_json(indent=2) + "\n```", self.start)
      self.writer.hparams(flat)
      if self.changes:
        self.writer.text("config_changes", "\n".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in self.changes.items()),
                         self.start)
    counts = model_accounting(self.factory, c)
    self.flops_per_token = counts["train_flops_per_token"]
    self.peak, peak_source = metrics_lib.peak_flops_per_device(c.model.dtype)
    log(f"{jax.device_count()} devices, mesh {dict(self.mesh.shape)}; " + ", ".join(
        f"{k} {v:,.0f}" for k, v in counts.items()))
    log(f"peak {self.peak / 1e9:.1f} GFLOP/s/device ({peak_source})")
    self.writer.text("accounting", metrics_lib.markdown_table(counts), self.start)

  def global_batch(self, local):
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, v,
                                                      (self.config.train.batch_size,) + v.shape[1:])
            for k, v in local.items()}

  def _profile(self, step, starting, state=None):
    p = self.config.profile
    if starting and step == p.start_step:
      jax.profiler.start_trace(str(self.workdir / "profile"))
    if not starting and step == p.start_step + p.num_steps - 1 and p.start_step >= 0:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()

  def _report_pending(self):
    """Logs the previous step's metrics (fetched one step late); a non-finite loss stops the run."""
    if self.pending is None:
      return
    (step, device_metrics), self.pending = self.pending, None
    values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not metrics_lib.is_finite({k: values[k] for k in ("loss", "grad_norm")}):
      raise NonFiniteLoss(f"non-finite loss {values['loss']} (grad norm {values['grad_norm']}) at step {step}; "
                          f"last good checkpoint: step {self.ckpt.latest_step()} (intact)")
    step_time = self.clock.lap()
    self.step_times[step] = step_time
    tps = self.config.train.batch_size * self.config.train.seq_len / step_time
    values.update(step_time=step_time, tokens_per_second=tps,
                  tokens_per_second_per_device=tps / jax.device_count(),
                  tflops_per_device=self.flops_per_token * tps / jax.device_count() / 1e12,
                  mfu=self.flops_per_token * tps / (self.peak * jax.device_count()))
    memory = metrics_lib.device_memory_gb()
    if memory is not None:
      values["memory_gb"] = memory
    self.writer.scalars(step, values, "train")
    self.progress.update(step, values)
    self.summary.update(step=step, train_loss=values["loss"], tokens_per_second=tps, mfu=values["mfu"])

  def _recover_last_metrics(self):
    """The summary's train figures from metrics.jsonl (the steps themselves ran before the interruption)."""
    for record in metrics_lib.read_metrics(self.workdir):
      if "train/loss" in record and record["step"] <= self.start:
        self.summary.update(step=record["step"], train_loss=record["train/loss"],
                            tokens_per_second=record.get("train/tokens_per_second"), mfu=record.get("train/mfu"))

  def _step_due(self, step):
    k = self.config.checkpoint
    return bool((k.every_steps and step % k.every_steps == 0) or step == self.config.train.steps)

  def _time_due(self):
    k = self.config.checkpoint
    return bool(k.every_seconds and time.perf_counter() - self.last_save_time >= k.every_seconds)

  def _agreed(self, signals):
    """(a save is due by the clock, stop): this process's own view, or the one all processes agreed on."""
    if self.agreement is None:
      return self._time_due(), bool(signals.received)
    return self.agreement.decision()

  def _offer(self, signals):
    """This step's local view, agreed at the next step boundary (process 0's clock decides the time)."""
    if self.agreement is not None:
      self.agreement.submit(jax.process_index() == 0 and self._time_due(), bool(signals.received))

  def _eval_due(self, step):
    every = self.config.eval.every_steps
    return bool((every and step % every == 0) or step == self.config.train.steps)

  def _save(self, step, state):
    began = time.perf_counter()
    self.writer.sync()  # metrics.jsonl durable before the checkpoint that covers its steps commits
    self.ckpt.save(step, state, {"next_batch": self.position["next_batch"] + step - self.start})
    self.last_save_time = time.perf_counter()
    self.save_seconds[step] = self.last_save_time - began  # how long the (async) save held up the loop
    self.clock.pause_since(began)

  def _evaluate(self, step, state):
    began = time.perf_counter()
    variables = {k: state[k] for k in state_lib.TREES}
    results = [jax.device_get(self.eval_step(variables, b)) for b in self.eval_batches]
    loss = float(np.mean([r["loss"] for r in results]))
    self.writer.scalars(step, {"loss": loss}, "eval")
    log(f"step {step}: eval loss {loss:.4f}")
    self.summary["eval_loss"] = loss
    self._weight_stats(step, state)
    self.clock.pause_since(began)

  def _weight_stats(self, step, state):
    """The objective's eval-time statistics of all params (host arrays; every process gathers, process 0 writes)."""
    if not any(rule.eval_stats for rule in self.factory.objective.rules):
      return
    params = self.factory.all_params(state["params"], state["frozen"])
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      host = multihost_utils.process_allgather(params, tiled=True)
    else:
      host = jax.device_get(params)
    scalars, histograms = self.factory.objective.eval_stats(host)
    self.writer.scalars(step, scalars, "weights")
    if self.writer.tb:
      for path, values in histograms.items():
        self.writer.tb.add_histogram(f"weights/{path}", values, step)
    self.summary.update({k: v for k, v in scalars.items() if "/" not in k})

  def _finish(self, state):
    """A greedy sample, the objective's end-of-run evaluation and summary.json. Every process computes (params
    are sharded over all); process 0 writes."""
    c, factory = self.config, self.factory
    if factory.objective.end_of_run is not None:
      with factory.context():
        model = factory.model(state["params"], state["frozen"], state["model_state"])
        self.summary.update(factory.objective.end_of_run(model, self.data, self.workdir))
    text = None
    if c.sample.max_new_tokens > 0:  # 0: the model does not generate text
      params = factory.all_params(state["params"], state["frozen"])
      text = sample_lib.generate(factory, params, self.data.tokenizer, c.sample.prompt, c.sample.max_new_tokens,
                                 c.train.seq_len, temperature=c.sample.temperature)
    if jax.process_index() == 0 and text is not None:
      self.writer.text("sample", text, self.summary["step"])
      print(f"sample: {c.sample.prompt!r} -> {text!r}", flush=True)
    if jax.process_index() == 0:
      self.summary["unigram_entropy"] = self.data.unigram_entropy_nats()
      workdir_lib.write_json(self.workdir / "summary.json", self.summary)
      s = self.summary
      print(f"done: step {s['step']}, train loss {s['train_loss'] or float('nan'):.4f}, eval loss "
            f"{s['eval_loss']:.4f} (unigram entropy {s['unigram_entropy']:.4f}), {s['tokens_per_second'] or 0:.0f} "
            f"tokens/s, MFU {s['mfu'] or 0:.1%}", flush=True)
    self.writer.close()


def build_pipeline(c, workdir=None):
  """The config's data pipeline; a builder's ValueError (bad path, file, row) is a one-line input error. A method
  that registers a data preparation step gets it run once into `<workdir>/data` (atomically) first."""
  name = data_registry.name_for(c.data)
  builder = _registered(data_registry, name)
  kwargs = {}
  prepare = data_registry.PREPARERS.get(name)
  if prepare is not None and workdir is not None:
    kwargs["prepared"] = prepare_data(prepare, c, workdir)
  try:
    return builder(c.data, seq_len=c.train.seq_len, global_batch_size=c.train.batch_size, seed=c.seed, **kwargs)
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(str(e).splitlines()[0]) from None


def prepare_data(prepare, c, workdir):
  target = workdir / "data"
  if not target.exists():
    staging = workdir.parent / f".{workdir.name}.data.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
      prepare(c.data, staging, c.seed)
    except (ValueError, FileNotFoundError) as e:
      shutil.rmtree(staging, ignore_errors=True)
      raise ConfigError(str(e).splitlines()[0]) from None
    workdir.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
  return target


def resolve_vocab_size(c, tokenizer_vocab, inherited=False):
  """model.vocab_size=0 takes the tokenizer's size padded to a multiple of 128. An explicit size must agree with
  the tokenizer: equal to it, or its padding to a multiple of 128 (fewer than 128 rows above it: a vocabulary table
  far larger than the tokenizer trains rows no token reaches). `inherited`: the size comes from a saved run's
  config (a resumed or imported checkpoint) and only has to cover the tokenizer."""
  explicit = c.model.vocab_size
  if explicit == 0:
    with c.unlocked():
      c.model.vocab_size = -(-tokenizer_vocab // 128) * 128
  elif explicit < tokenizer_vocab or (not inherited and explicit != tokenizer_vocab and explicit % 128):
    raise ConfigError(f"config key 'model.vocab_size': {explicit} disagrees with the tokenizer's vocabulary "
                      f"({tokenizer_vocab}); use 0 (derive it), {tokenizer_vocab} or a multiple of 128 above it")
  elif not inherited and explicit - tokenizer_vocab >= 128:
    raise ConfigError(f"config key 'model.vocab_size': {explicit} is {explicit - tokenizer_vocab} rows above the "
                      f"tokenizer's vocabulary ({tokenizer_vocab}), rows no token ever trains; use 0 (derive it) or "
                      f"data of that vocabulary (data.path, or data.name=embedded_bpe with data.bpe_vocab_size)")


def _registered(registry, name):
  try:
    return registry.get(name)
  except KeyError as e:
    raise ConfigError(e.args[0]) from None


def _flat(tree):
  return jax.tree_util.tree_flatten_with_path(tree)[0]


def param_total(factory):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves((factory.abstract_params, factory.abstract_frozen)))


def model_accounting(factory, config):
  """The model's registered counts (params, FLOPs per token) or 6 x params when it registers none."""
  fn = model_registry.ACCOUNTING.get(config.model.name)
  if fn is not None:
    return dict(fn(config.model, config.train.seq_len))
  total = param_total(factory)
  return {"params_total": total, "train_flops_per_token": 6.0 * total}
