"""The console line (tessera.trainer.progress) and the cached CPU peak (tessera.trainer.cpu_peak), without a run."""
import io
import json

from tessera.trainer import cpu_peak
from tessera.trainer.progress import Progress, format_line

VALUES = {"loss": 2.5, "step_time": 0.25, "tokens_per_second": 4096.0, "tokens_per_second_per_device": 1024.0,
          "tflops_per_device": 0.012, "mfu": 0.123, "lr": 3e-4, "grad_norm": 1.5}


class Tty(io.StringIO):
  def isatty(self):
    return True


def test_line_has_maxtext_fields_in_order():
  line = format_line(10, 100, VALUES, eta=75)
  assert line == ("step 10/100 | loss 2.5000 | step 0.250s | tok/s 4,096 | tok/s/device 1,024 | TFLOP/s/device "
                  "0.012 | MFU 12.3% | lr 3.000e-04 | grad norm 1.500 | ETA 1m15s")


def test_each_due_line_printed_once_in_a_log_file():
  out = io.StringIO()
  progress = Progress(10, 0, 4, stream=out)
  for step in (1, 2, 3, 4, 4, 5, 8, 9, 10, 10):  # 4 and 10 reported twice (a report before a save, say)
    progress.update(step, VALUES)
  progress.close()
  lines = out.getvalue().splitlines()
  assert [line.split(" | ")[0] for line in lines] == ["step 1/10", "step 4/10", "step 8/10", "step 10/10"]
  assert "ETA" not in lines[0] and all("ETA" in line for line in lines[1:])  # no ETA from the compile step
  assert "\r" not in out.getvalue()


def test_eta_counts_from_the_first_reported_step():
  progress = Progress(100, 50, 1, stream=io.StringIO())
  progress.first = (51, 1000.0)  # the first step of a resumed run (compilation in it) ended at t=1000
  assert progress.eta(51, 1000.0) is None
  assert progress.eta(61, 1010.0) == 39.0  # 1 s/step since then, 39 steps left


def test_terminal_bar_redrawn_under_the_lines():
  out = Tty()
  progress = Progress(4, 0, 2, stream=out)
  for step in range(1, 5):
    progress.update(step, VALUES)
  progress.close()
  text = out.getvalue()
  assert "100% |" in text and "elapsed" in text and text.endswith("\n")
  assert text.count("step 2/4 |") == 1 and text.count("step 4/4 |") == 1


def test_cpu_peak_measured_once_per_cpu_model(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(cpu_peak, "busy", lambda: False)
  calls = []

  def fake_measure(dtype):
    calls.append(dtype)
    return {"float32": 80e9, "bfloat16": 20e9}[dtype]

  first = cpu_peak.peak(["bfloat16", "float32"], fake_measure)
  again = cpu_peak.peak(["bfloat16", "float32"], fake_measure)
  assert first[0] == again[0] == 80e9 and sorted(calls) == ["bfloat16", "float32"]
  assert "measured once" in again[1] and str(tmp_path / "tessera" / "cpu_peak.json") in again[1]
  table = json.loads((tmp_path / "tessera" / "cpu_peak.json").read_text())
  assert table[cpu_peak.cpu_model()] == {"bfloat16": 20e9, "float32": 80e9}


def test_cpu_peak_measured_on_a_busy_machine_is_not_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(cpu_peak.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
  monkeypatch.setattr(cpu_peak.os, "cpu_count", lambda: 2)
  peak, how = cpu_peak.peak(["float32"], lambda d: 3e10)
  assert peak == 3e10 and "under load (load average 9.0 on 2 cores): not cached" in how
  assert not (tmp_path / "tessera" / "cpu_peak.json").exists()
  monkeypatch.setattr(cpu_peak.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
  peak, how = cpu_peak.peak(["float32"], lambda d: 9e10)
  assert peak == 9e10 and "measured now" in how
  assert cpu_peak.peak(["float32"], lambda d: 1.0)[0] == 9e10  # quiet: cached, used from then on


def test_one_other_job_on_two_cores_counts_as_busy(tmp_path, monkeypatch):
  """Load 1.5 on 2 cores (one other job): measured, used, not cached (a cached fp32 peak of 105 vs 275-292 GFLOP/s
  quiet was seen this way)."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(cpu_peak.os, "getloadavg", lambda: (1.5, 1.5, 1.5))
  monkeypatch.setattr(cpu_peak.os, "cpu_count", lambda: 2)
  assert "not cached" in cpu_peak.peak(["float32"], lambda d: 1e11)[1]
  assert not (tmp_path / "tessera" / "cpu_peak.json").exists()


def test_unreadable_cpu_peak_cache_is_measured_again(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(cpu_peak, "busy", lambda: False)
  (tmp_path / "tessera").mkdir()
  (tmp_path / "tessera" / "cpu_peak.json").write_text("{torn")
  assert cpu_peak.peak(["float32"], lambda d: 5e10)[0] == 5e10
  assert cpu_peak.peak(["float32"], lambda d: 1.0)[0] == 5e10
