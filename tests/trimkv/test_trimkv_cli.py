"""configs/trimkv.py through the real CLI: a tiny base LM (configs/lm.py:tiny), then gate-only training on it.
Spec check 4 (base weights bit-identical, no optimizer state for them) and issue 12's bad-input lines."""
import json

import numpy as np
import pytest

from tessera_testing import ROOT, TINY, run_cli
from tessera_testing import restore_states as restore

CONFIG = "configs/trimkv.py"


def metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("trimkv") / "base"
  run_cli(*TINY, "--workdir", workdir, "--config.train.steps=4", "--config.sample.max_new_tokens=0")
  return workdir


@pytest.fixture(scope="module")
def gate_run(base_run):
  workdir = base_run.parent / "gates"
  run_cli("--config", f"{CONFIG}:tiny", "--workdir", workdir, f"--config.init.workdir={base_run}",
          "--config.eval.every_steps=2", "--config.sample.max_new_tokens=0")
  return workdir


@pytest.mark.parametrize("variant", ["tiny", "small", "base", "base_tasks"])
def test_every_variant_validates_with_two_steps(variant):
  from tessera.trainer import cli
  config, _ = cli.load_config(f"{CONFIG}:{variant}", {"train.steps": 2})
  assert config.train.steps == 2 and config.optim.warmup_steps <= 2
  if variant == "base_tasks":  # stage 1 of the base: tasks only, the filler text trained too
    assert config.data.recall.text_fraction == 0.0 and config.data.recall.filler_loss
  elif variant != "base":
    assert config.train.trainable == "retention_gate" and config.model.name == config.loss.name == "trimkv"


def test_gate_training_lowers_the_loss(gate_run):
  """Tiny run, 20 steps: the capacity term falls from ~0.4 (beta ~ 1, S_t ~ t + 1 > M = 16) to near 0 and the
  eval loss (KL + CE + capacity on fixed batches) falls with it; the KL to the teacher stays small."""
  rows = metrics(gate_run)
  train = [r for r in rows if "train/capacity" in r]
  evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
  assert train[0]["train/capacity"] > 0.3 and train[-1]["train/capacity"] < 0.3 * train[0]["train/capacity"]
  assert train[-1]["train/occupancy_last"] < 0.5 * train[0]["train/occupancy_last"]
  assert evals[-1] < evals[0] - 0.1, evals
  assert train[-1]["train/kl"] < 0.05


def test_base_weights_bit_identical_and_only_gates_train(base_run, gate_run):
  source, final = restore((base_run, 4), (gate_run, 20))
  base = {k[len("['params']"):]: v for k, v in source.items() if k.startswith("['params']")}
  frozen = {k[len("['frozen']"):]: v for k, v in final.items() if k.startswith("['frozen']")}
  assert frozen.keys() == base.keys()
  for key, value in base.items():
    np.testing.assert_array_equal(frozen[key], value, err_msg=key)
  trained = [k for k in final if k.startswith("['params']")]
  assert len(trained) == 8 and all("retention_gate" in k for k in trained)
  assert not any("retention_gate" not in k for k in final if k.startswith("['opt_state']") and "['mu']" in k)
  report = json.loads((gate_run / "init.json").read_text())
  assert len(report["loaded"]) == len(base) and all("retention_gate" in p for p in report["fresh"])


@pytest.mark.parametrize("key, value", [("loss.trimkv.capacity_norm", "T"), ("model.trimkv.gate", "rg2"),
                                        ("model.trimkv.gate_hidden", 0), ("loss.trimkv.memory_size", 0)])
def test_bad_keys_fail_validation_naming_the_key(key, value):
  from tessera.trainer import cli
  from tessera.trainer.config_loader import ConfigError
  with pytest.raises(ConfigError, match=f"^config key '{key}'"):
    cli.load_config(f"{CONFIG}:tiny", {key: value})


def test_missing_init_workdir_is_one_line_exit_2(tmp_path):
  result = run_cli("--config", f"{CONFIG}:tiny", "--workdir", tmp_path / "run",
                   f"--config.init.workdir={tmp_path / 'nope'}", check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "'init.workdir'" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert not (tmp_path / "run").exists()


def test_sample_with_the_trimkv_cache(gate_run):
  """scripts/sample --kv-policy trimkv: the gated run generates through the bounded TRIM-KV cache."""
  result = run_cli("sample", "--workdir", gate_run, "--kv-policy", "trimkv", "--kv-budget", "16", "--kv-buffer", "8",
                   "--prompt", "def f(x): return x", "--max-new-tokens", "40")
  assert "kv trimkv M=16 capacity=24" in result.stderr
  assert result.stdout.startswith("def f(x): return x")


def test_init_workdir_supplies_the_base_shape_and_data(base_run):
  """configs/trimkv.py:small (d 128, 4 layers, synthetic_recall) on a configs/lm.py:tiny run takes that run's
  model shape keys and data section; an agreeing override is fine, a disagreeing one is a one-line error."""
  from tessera.trainer import cli
  from tessera.trainer.config_loader import ConfigError
  base = json.loads((base_run / "config.json").read_text())
  config, _ = cli.load_config(f"{CONFIG}:small", {"init.workdir": str(base_run), "model.attention_impl": "xla",
                                                  "model.d_model": base["model"]["d_model"]})
  for key in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "vocab_size", "tie_embeddings"):
    assert config.model[key] == base["model"][key], key
  assert config.model.name == "trimkv" and config.data.name == base["data"]["name"]
  with pytest.raises(ConfigError, match="^config key 'model.n_layers': 7 disagrees"):
    cli.load_config(f"{CONFIG}:small", {"init.workdir": str(base_run), "model.n_layers": 7})


def test_init_workdir_without_attention_blocks_is_one_line_exit_2(tmp_path, base_run):
  fake = tmp_path / "no_attention"
  fake.mkdir()
  config = json.loads((base_run / "config.json").read_text())
  config["model"] = {"name": "mlp_only", "d_model": 64, "n_layers": 2}
  (fake / "config.json").write_text(json.dumps(config))
  result = run_cli("--config", f"{CONFIG}:tiny", "--workdir", tmp_path / "run", f"--config.init.workdir={fake}",
                   check=False)
  assert result.returncode == 2 and "no attention blocks" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (("--kv-policy", "trimkv", "--kv-budget", "16"), "writes no per-token cache scores"),
    (("--kv-policy", "sink_window", "--kv-budget", "3"), "--kv-sinks: must be in [0, --kv-budget=3)")])
def test_sample_bad_cache_flags_are_one_line_exit_2(base_run, flags, message):
  """--kv-policy trimkv on a run without gates; a budget below the 4 sink tokens."""
  result = run_cli("sample", "--workdir", base_run, *flags, "--prompt", "x", check=False)
  assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_sample_with_h2o(gate_run):
  """A gated model under another policy: its per-token scores are ignored, h2o accumulates attention."""
  result = run_cli("sample", "--workdir", gate_run, "--kv-policy", "h2o", "--kv-budget", "8",
                   "--prompt", "def f(x): return x", "--max-new-tokens", "20")
  assert "kv h2o M=8" in result.stderr and result.stdout.startswith("def f(x): return x")


@pytest.mark.parametrize("flags, message", [(("--budgets", "4,16"), "--budgets: M=4 must exceed the 4 sink"),
                                            ((), "eval_kv needs the synthetic_recall tasks")])
def test_eval_kv_bad_input_is_one_line_exit_2(base_run, flags, message):
  import subprocess
  import sys
  result = subprocess.run([sys.executable, "scripts/eval_kv.py", "--workdir", str(base_run), *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
