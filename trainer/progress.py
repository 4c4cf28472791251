"""The console: one MaxText-style line every train.log_every_steps steps, and a bar on a terminal.

Why: the line carries what a person checks while a job runs (step time, throughput per device, MFU, lr, grad
norm) without opening TensorBoard; metrics.jsonl holds the same values. The ETA counts from the end of the first
reported step of this process, so compilation and restore never inflate it.
"""
import sys
import time

import jax

# (key in the reported values, label, format); missing keys are left out of the line.
FIELDS = (
    ("loss", "loss", "{:.4f}"),
    ("step_time", "step", "{:.3f}s"),
    ("tokens_per_second", "tok/s", "{:,.0f}"),
    ("tokens_per_second_per_device", "tok/s/device", "{:,.0f}"),
    ("tflops_per_device", "TFLOP/s/device", "{:.3f}"),
    ("mfu", "MFU", "{:.1%}"),
    ("lr", "lr", "{:.3e}"),
    ("grad_norm", "grad norm", "{:.3f}"),
)


def clock(seconds):
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return (f"{hours}h" if hours else "") + f"{rest // 60}m{rest % 60:02d}s"


def format_line(step, total, values, eta=None):
  """`step 10/100 | loss 3.1416 | step 0.120s | tok/s 8,533 | ... | ETA 0m11s` (ETA only once it is known)."""
  parts = [f"step {step}/{total}"]
  parts += [f"{label} {fmt.format(values[key])}" for key, label, fmt in FIELDS if key in values]
  if eta is not None:
    parts.append(f"ETA {clock(eta)}")
  return " | ".join(parts)


class Progress:
  """Prints each logged step's line once (process 0, stderr). On a terminal a bar with percentage, elapsed and ETA
  is redrawn in place under the lines; in a log file only the plain lines appear."""

  def __init__(self, total_steps, start_step, every, stream=None, tty=None):
    self.total, self.every, self.start_step = total_steps, max(int(every), 1), start_step
    self.stream = stream or sys.stderr
    self.tty = self.stream.isatty() if tty is None else tty
    self.began = time.perf_counter()
    self.first = None  # (step, time) at the end of the first reported step: the ETA's origin
    self.printed, self.bar_shown = set(), False

  def eta(self, step, now):
    if self.first is None or step <= self.first[0]:
      return None
    rate = (now - self.first[1]) / (step - self.first[0])
    return rate * (self.total - step)

  def due(self, step):
    return step % self.every == 0 or step == self.total or step == self.start_step + 1

  def update(self, step, values):
    if jax.process_index() != 0:
      return
    now = time.perf_counter()
    if self.first is None:
      self.first = (step, now)
    eta = self.eta(step, now)
    if self.due(step) and step not in self.printed:
      self.printed.add(step)
      self._write(format_line(step, self.total, values, eta) + "\n")
    if self.tty:
      self._bar(step, now, eta)

  def close(self):
    """Ends the bar's line on a terminal; prints nothing else (every line was printed when it was due)."""
    if self.bar_shown:
      self.stream.write("\n")
      self.stream.flush()
      self.bar_shown = False

  def _bar(self, step, now, eta, width=30):
    frac = min(step / self.total, 1.0) if self.total else 1.0
    filled = int(round(frac * width))
    eta_text = clock(eta) if eta is not None else "?"
    text = (f"{frac:4.0%} |{'#' * filled}{'.' * (width - filled)}| {step}/{self.total} "
            f"[{clock(now - self.began)} elapsed, ETA {eta_text}]")
    self.stream.write("\r\x1b[2K" + text)
    self.stream.flush()
    self.bar_shown = True

  def _write(self, text):
    if self.bar_shown:  # clear the bar; it is redrawn below the new line
      text = "\r\x1b[2K" + text
      self.bar_shown = False
    self.stream.write(text)
    self.stream.flush()
