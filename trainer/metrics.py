"""Throughput accounting (tokens/s, TFLOP/s and MFU per device), metrics.jsonl + TensorBoard (+ wandb), hparams."""
import json
import math
import os
import struct
import sys
import time

import jax
import numpy as np
from etils import epath

from tessera.trainer import cpu_peak
from tessera.trainer.progress import Progress  # noqa: F401  (the console line lives beside the scalars)

# Dense bf16 peak FLOP/s per chip (vendor datasheets); fp32 compute on these is not what MFU is quoted against.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12, "TPU7x": 2307e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA B200": 2250e12, "NVIDIA A100": 312e12,
}


def peak_flops_per_device(dtype):
  """(peak FLOP/s per device, where it came from). Table lookup by device kind; on CPU the best of an fp32 and a
  compute-dtype matmul (a CPU without native bf16 runs bf16 slower than fp32; its peak is still the fp32 one),
  measured once per CPU model and cached (tessera.trainer.cpu_peak), shared by fake devices."""
  device = jax.local_devices()[0]
  for kind, flops in PEAK_FLOPS.items():
    if device.device_kind.startswith(kind):
      return flops, f"datasheet bf16 peak of {kind}"
  peak, how = cpu_peak.peak(sorted({"float32", dtype}))
  return peak / jax.local_device_count(), how


def device_memory_gb():
  stats = jax.local_devices()[0].memory_stats() or {}
  used = stats.get("peak_bytes_in_use", stats.get("bytes_in_use"))
  return None if used is None else used / 1e9


METRICS_FILE = "metrics.jsonl"
HPARAM_METRICS = ("train/loss", "eval/loss")


def markdown_table(counts):
  """{name: number} as a Markdown table (TensorBoard's text tab renders Markdown; plain lines run together)."""
  rows = "".join(f"| {k} | {v:,.0f} |\n" for k, v in counts.items())
  return "| count | value |\n|:--|--:|\n" + rows


class Writer:
  """Scalars to <workdir>/metrics.jsonl (durable) and TensorBoard (<workdir>/tb), text to TensorBoard; process 0 only.

  Why both: tensorboardX's flush() leaves queued events unwritten, so a SIGKILL can lose the scalars of steps a
  checkpoint already covers. metrics.jsonl gets one JSON line per scalars() call ({"step", "time", "<prefix>/<name>"
  ...}); sync() fsyncs it and is called right before each checkpoint save. Writer(workdir, resume_step=N) (N = the
  restored step, 0 for a fresh start) drops the lines of steps > N (the run replays them), purges those steps from
  TensorBoard's view, and rewrites the TensorBoard events of steps <= N that never reached the event files.
  """

  def __init__(self, workdir, resume_step=None, wandb_config=None):
    self.tb, self._log, self.sink = None, None, None
    if jax.process_index() != 0:
      return
    workdir = epath.Path(workdir)
    if wandb_config is not None:  # first: a missing wandb is a config error before anything is written
      from tessera.trainer.wandb_sink import WandbSink
      self.sink = WandbSink(workdir, wandb_config)
    workdir.mkdir(parents=True, exist_ok=True)
    self.path = workdir / METRICS_FILE
    records = _truncate_log(self.path, resume_step) if resume_step is not None else []
    self._log = _AppendLog(self.path)
    from tensorboardX import SummaryWriter
    # A unique, time-ordered file name: tensorboardX names files by the second, so a quick restart would reopen (and
    # truncate) the previous file; TensorBoard reads files in name order, which must be creation order for purges.
    self.tb = SummaryWriter(str(workdir / "tb"), flush_secs=30, filename_suffix=f".{time.time_ns()}",
                            purge_step=None if resume_step is None else resume_step + 1)
    if records:
      self._rewrite_missing_events(workdir / "tb", records)

  def scalars(self, step, values, prefix):
    if self.tb is None:
      return
    tags = {f"{prefix}/{name}": float(value) for name, value in values.items()}
    now = time.time()
    self._log.write(json.dumps({"step": int(step), "time": round(now, 3), **{k: _encode(v) for k, v in tags.items()}},
                               allow_nan=False) + "\n")
    for tag, value in tags.items():
      self.tb.add_scalar(tag, value, step, walltime=now)
    if self.sink:
      self.sink.log(step, tags)

  def text(self, tag, text, step=0):
    if self.tb:
      self.tb.add_text(tag, text, step)

  def hparams(self, flat_config, metrics=HPARAM_METRICS):
    """The config's scalar and string values in TensorBoard's HParams tab, in this run's own event files (a sweep's
    workdirs are its sessions). Its metrics are the run's own train/loss and eval/loss tags: the tab shows their
    last values, the final losses, even of a run stopped and resumed."""
    if not self.tb:
      return
    from tensorboardX.summary import hparams
    values = {k: v for k, v in flat_config.items() if isinstance(v, (bool, int, float, str))}
    writer = self.tb._get_file_writer()
    for summary in hparams(values, dict.fromkeys(metrics, 0.0)):
      writer.add_summary(summary)

  def sync(self):
    """Makes every scalars() line so far durable (fsync). Call right before a checkpoint save starts."""
    if self._log:
      self._log.sync()

  def flush(self):
    if self.tb:
      self._log.flush()
      self.tb.flush()

  def close(self):
    if self.tb:
      self._log.close()
      self.tb.close()
      self.tb, self._log = None, None
    if self.sink:
      self.sink.close()
      self.sink = None

  def _rewrite_missing_events(self, tb_dir, records):
    present = tb_scalar_keys(tb_dir)
    written = 0
    for record in records:
      for tag, value in record.items():
        if tag not in ("step", "time") and (tag, record["step"]) not in present:
          self.tb.add_scalar(tag, _decode(value), record["step"], walltime=record.get("time"))
          written += 1
    if written:
      print(f"metrics: rewrote {written} TensorBoard scalars from {METRICS_FILE} (lost before the last checkpoint)",
            file=sys.stderr, flush=True)


class _AppendLog:
  """An append-only text file: a local file fsync'd on sync(); on object stores (gs://, no append) the whole text is
  rewritten on sync() (a single atomic object write)."""

  def __init__(self, path):
    self.path, self.remote = path, "://" in str(path)
    if self.remote:
      self.text = path.read_text() if path.exists() else ""
    else:
      self.file = open(os.fspath(path), "a", encoding="utf-8")

  def write(self, line):
    if self.remote:
      self.text += line
    else:
      self.file.write(line)

  def flush(self):
    if not self.remote:
      self.file.flush()

  def sync(self):
    if self.remote:
      self.path.write_text(self.text)
    else:
      self.file.flush()
      os.fsync(self.file.fileno())

  def close(self):
    self.sync()
    if not self.remote:
      self.file.close()


def read_metrics(workdir):
  """The records of <workdir>/metrics.jsonl, in order; a torn last line (killed mid-write) is skipped."""
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and isinstance(record.get("step"), int):
      records.append(record)
  return records


def _truncate_log(path, step):
  """Keeps the complete records of steps <= step (atomically, fsync'd); returns them."""
  if not path.exists():
    return []
  records = read_metrics(path.parent)
  kept = [r for r in records if r["step"] <= step]
  text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
  if text != path.read_text():
    tmp = path.parent / (path.name + ".tmp")
    if "://" in str(path):
      tmp.write_text(text)
    else:
      with open(os.fspath(tmp), "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
  return kept


def _encode(value):
  return value if math.isfinite(value) else repr(value)  # "nan", "inf", "-inf": strict JSON has no non-finite


def _decode(value):
  return float(value)


def tb_scalar_keys(tb_dir):
  """{(tag, step)} of the scalars TensorBoard shows from the event files directly in tb_dir (a SessionLog START at
  step S hides earlier events with step >= S, as TensorBoard's purge does)."""
  from tensorboardX.proto import event_pb2
  keys = set()
  tb_dir = epath.Path(tb_dir)
  if not tb_dir.exists():
    return keys
  for path in sorted(p for p in tb_dir.iterdir() if ".tfevents." in p.name):
    for data in _records(path):
      event = event_pb2.Event()
      try:
        event.ParseFromString(data)
      except Exception:  # noqa: BLE001  (a torn record at the end of a killed writer's file)
        break
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        keys = {k for k in keys if k[1] < event.step}
      elif event.HasField("summary"):
        keys.update((v.tag, event.step) for v in event.summary.value if v.HasField("simple_value"))
  return keys


def _records(path):
  """TFRecord payloads (length, crc, data, crc); stops at a truncated record."""
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        return
      yield data


def is_finite(metrics):
  return all(np.isfinite(v) for v in metrics.values())
