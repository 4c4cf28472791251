"""model.dtype="auto": resolved once at config load by a documented rule; config.json records the choice."""
from tessera.trainer import dtype_policy
from tessera.trainer import cli


def test_rule():
  assert dtype_policy.choose("gpu") == "bfloat16" and dtype_policy.choose("tpu") == "bfloat16"
  assert dtype_policy.choose("cpu", {"float32": 290e9, "bfloat16": 200e9}) == "bfloat16"  # AVX-512, no AMX
  assert dtype_policy.choose("cpu", {"float32": 167e9, "bfloat16": 1590e9}) == "bfloat16"  # AMX
  assert dtype_policy.choose("cpu", {"float32": 300e9, "bfloat16": 100e9}) == "float32"  # emulated bf16


def test_load_config_resolves_auto(monkeypatch):
  monkeypatch.setattr(dtype_policy, "choose", lambda: "bfloat16")
  config, _ = cli.load_config("configs/lm.py:tiny", {"model.dtype": "auto"})
  assert config.model.dtype == "bfloat16"
  config, _ = cli.load_config("configs/lm.py:tiny", {})
  assert config.model.dtype == "float32"  # the default is unchanged
