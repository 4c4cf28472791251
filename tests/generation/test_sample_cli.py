"""`scripts/sample` on the engine: bad flags give one stderr line and exit 2 before any model is built; the trainer
adapter samples float and 8-bit (scripts/quantize) weights; end to end on a trained run with --prompts (slow)."""
import subprocess
import sys

import jax
import numpy as np
import pytest

from tessera_testing import ROOT, run_cli
from tessera.trainer import cli


@pytest.mark.parametrize("flags,message", [
    (["--kv-budget", "0", "--kv-policy", "window"], "--kv-budget: must be >= 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens: must be >= 1"),
    (["--max-new-tokens", "-3"], "--max-new-tokens: must be >= 1"),
    (["--temperature", "-0.5"], "--temperature: must be >= 0"),
    (["--kv-policy", "lru"], "--kv-policy: unknown policy 'lru'"),
    (["--kv-policy", "window"], "--kv-budget: --kv-policy window needs a budget"),
    (["--kv-policy", "sink_window", "--kv-budget", "4", "--kv-sinks", "4"], "--kv-sinks"),
    (["--top-p", "0"], "--top-p"),
])
def test_bad_flags_one_line_exit_2(flags, message, capsys, tmp_path):
  code = cli.main(["sample", "--workdir", str(tmp_path / "none"), "--prompt", "def ", *flags])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1 and message in err, err


def test_empty_prompt_file_one_line_exit_2(tmp_path):
  (tmp_path / "prompts.txt").write_text("")
  result = subprocess.run([sys.executable, "-m", "tessera.trainer", "sample", "--workdir", str(tmp_path),
                           "--prompts", str(tmp_path / "prompts.txt")], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 2 and result.stdout == "", result
  assert result.stderr.count("\n") == 1 and "holds no prompt" in result.stderr


def test_trainer_adapter_samples_float_and_quantized_weights():
  from tessera.data.byte_tokenizer import ByteTokenizer
  from tessera.models import quantized
  from tessera.trainer import mesh as mesh_lib
  from tessera.trainer import sample
  from tessera.trainer import state as state_lib

  def factory_of(weight_format="float"):
    config, _ = cli.load_config("configs/lm.py:tiny", {"model.vocab_size": 384})
    config.model.weight_format = weight_format  # as scripts/quantize writes it (training refuses it)
    return state_lib.StateFactory(config, mesh_lib.make_mesh(config))

  factory = factory_of()
  state = factory.init(0)
  params = factory.all_params(state["params"], state["frozen"])
  tokenizer = ByteTokenizer()
  text = sample.generate(factory, params, tokenizer, "def ", 12, 64)
  assert isinstance(text, str) and 0 < len(tokenizer.encode(text)) <= 12
  stored = quantized.encode_tree(jax.tree.map(np.asarray, params), "rf8")
  decoded = quantized.decode_tree(stored, "rf8", np.float32)
  from_codes = sample.generate(factory_of(weight_format="rf8"), stored, tokenizer, "def ", 12, 64)
  assert from_codes == sample.generate(factory, decoded, tokenizer, "def ", 12, 64)


@pytest.mark.slow  # the shared trained tiny run, a quantized copy, three CLI calls (~1 min)
def test_sample_command_end_to_end(trained_workdir, tmp_path):
  prompts = ["def ", "import os", "class A:"]
  (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
  base = ["sample", "--workdir", trained_workdir, "--prompts", tmp_path / "prompts.txt", "--max-new-tokens", "24"]
  full = run_cli(*base)
  lines = full.stdout.splitlines()
  assert len(lines) == 3 and all(line.startswith(p) for line, p in zip(lines, prompts)), full.stdout
  assert "sample:" in full.stderr
  window = run_cli(*base, "--kv-policy", "sink_window", "--kv-budget", "16", "--kv-buffer", "4")
  assert len(window.stdout.splitlines()) == 3
  out = tmp_path / "rf8"
  subprocess.run([sys.executable, str(ROOT / "scripts" / "transform_run.py"), "quantize", "--workdir",
                  str(trained_workdir), "--format", "rf8", "--out", str(out)], cwd=ROOT, check=True,
                 capture_output=True)
  single = run_cli("sample", "--workdir", out, "--prompt", "def ", "--max-new-tokens", "8", "--temperature", "0.7",
                   "--top-k", "20", "--top-p", "0.9", "--seed", "3")
  assert single.stdout.startswith("def ")
