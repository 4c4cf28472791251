"""An imported run is a run like any other: eval (default test), and sample, continued training and init.workdir
through the user commands (slow)."""
import json
import subprocess
import sys

import numpy as np
import pytest

import hf_helpers
from tessera.trainer import inspect_run
from tessera_testing import ROOT, run_cli

import_hf = hf_helpers.import_script("import_hf")


def test_imported_run_evaluates(tmp_path, prepared):
  hf_helpers.write_hf_folder(tmp_path / "hf", hf_helpers.QWEN3)
  assert import_hf.main(["--model", str(tmp_path / "hf"), "--out", str(tmp_path / "run"), "--data",
                         str(prepared), "--params-only"]) == 0
  result = inspect_run.evaluate(tmp_path / "run", batches=1)
  assert result["step"] == 0 and np.isfinite(result["eval_loss"])
  summary = json.loads((tmp_path / "run" / "import.json").read_text())
  assert summary["architecture"] == "Qwen3ForCausalLM" and summary["tensors"] == 24
  assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").exists()


@pytest.mark.slow
def test_imported_run_samples_trains_and_initialises(tmp_path, prepared):
  # 384 rows: a fresh run (the init.workdir child) may not carry >= 128 rows above its tokenizer (trainer rule)
  hf_helpers.write_hf_folder(tmp_path / "hf", {**hf_helpers.LLAMA, "vocab_size": 384}, shards=2)
  run = tmp_path / "run"
  subprocess.run([str(ROOT / "scripts" / "import_hf"), "--model", str(tmp_path / "hf"), "--out", str(run),
                  "--data", str(prepared)], check=True, capture_output=True)
  sample = subprocess.run([sys.executable, "-m", "tessera.trainer", "sample", "--workdir", str(run), "--prompt",
                           "def ", "--max-new-tokens", "4"], cwd=ROOT, capture_output=True, text=True, check=True)
  assert sample.stdout.startswith("def ")
  run_cli("--workdir", run, "--config.train.steps=2", "--config.eval.batches=1")  # continue from config.json
  assert json.loads((run / "summary.json").read_text())["step"] == 2
  run_cli("--config", run / "config.json", "--workdir",
          tmp_path / "child", "--config.init.workdir", run, "--config.data.path", prepared,
          "--config.train.steps=1", "--config.eval.batches=1")
  init = json.loads((tmp_path / "child" / "init.json").read_text())
  assert len(init["loaded"]) == 21 and not init["fresh"]
