"""scripts/bench_gpu.sh --cpu-smoke: the lent-GPU plan's code paths at tiny shapes on CPU, with the modules the
device image lacks (ml_collections, grain, tensorboardX) made unimportable; every section leaves JSON rows."""

import json
import os
import subprocess
import sys

import pytest

from tessera_testing import ROOT


@pytest.mark.slow  # ~2 minutes on 2 cores (interpret-mode compiles)
def test_cpu_smoke_runs_every_section(tmp_path):
  env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
  result = subprocess.run(["scripts/bench_gpu.sh", "--cpu-smoke"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert result.stdout.startswith("jax ")  # version and device before anything else
  rows = [json.loads(line) for line in (tmp_path / "bench_gpu.jsonl").read_text().splitlines()]
  assert rows[0]["section"] == "header" and rows[0]["backend"] == "cpu"
  by = {}
  for row in rows[1:]:
    by.setdefault((row["section"], row["impl"] if "impl" in row else row.get("name")), []).append(row)
  ours = by[("attention", "pallas")]
  assert [r["D"] for r in ours] == sorted((r["D"] for r in ours), reverse=True)  # the larger head dim first
  assert all(r["err_vs_reference"] < 1e-2 and r["fwd_bwd_tflops"] > 0 for r in ours)
  assert by[("attention", "pallas_mul_logit")][0]["err_vs_reference"] < 2e-2
  assert all("cuDNN needs a GPU" in r["error"] for r in by[("attention", "cudnn")])
  assert all("fwd_bwd_tflops" in r for r in by[("sweep", "pallas")] + by[("sweep", "pallas_all_masked")])
  assert by[("lookup", "pallas")][0]["err_vs_xla"] == 0.0
  assert all(r["err_vs_reference"] < 1e-2 and r["tokens_per_s"] > 0 for r in by[("decode", "pallas_decode")])
  for name in ("packed", "unpacked"):
    (train,) = by[("train", name)]
    assert train["steps"] == 10 and train["loss_last"] < train["loss_first"]
  assert "| D | T | impl |" in result.stdout and "| train |" in result.stdout
