"""Config loading, overrides, validation and sweeps: each bad input is one line naming the key, exit 2."""
import json

import pytest

from tessera_testing import TINY, run_cli
from tessera.trainer import cli, config_loader, validate
from tessera.trainer.config_loader import ConfigError


def test_overrides_parse_types_and_follow_references():
  config, _ = cli.load_config("configs/lm.py:small", {"optim.lr": 1e-3, "train.steps": 400, "model.dtype": "bfloat16"})
  assert config.optim.lr == 1e-3 and config.train.steps == 400 and config.model.dtype == "bfloat16"
  assert config.optim.warmup_steps == 400 // 20  # warmup is tied to train.steps


def test_split_overrides_accepts_both_spellings():
  assert cli.split_overrides(["--config.optim.lr=1e-3", "--config.seed", "3", "--config.sample.prompt=a b"]) == {
      "optim.lr": 1e-3, "seed": 3, "sample.prompt": "a b"}
  with pytest.raises(ConfigError, match="unrecognized argument '--lr'"):
    cli.split_overrides(["--lr", "3"])


@pytest.mark.parametrize("override, message", [
    ({"optim.lrr": 1.0}, "config key 'optim.lrr' does not exist"),
    ({"train.steps": "many"}, "config key 'train.steps': cannot set 'many'"),
    ({"train.batch_size": 10, "train.microbatches": 4}, "config key 'train.batch_size': 10 is not divisible by "
                                                        "train.microbatches=4"),
    ({"train.batch_size": 6, "mesh.data": 4}, "config key 'train.batch_size': 6 is not divisible by the "
                                              "batch-sharding axes data*fsdp=4"),
    ({"model.n_kv_heads": 3}, "config key 'model.n_kv_heads'"),
    ({"model.dtype": "float16"}, "config key 'model.dtype': 'float16' is not one of"),
    ({"optim.schedule": "step"}, "config key 'optim.schedule'"),
    ({"mesh.tensor": 3}, "config key 'model.n_heads': 8 is not divisible by mesh.tensor=3"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "config key 'mesh': at most one axis may be -1"),
    ({"optim.groups": [{"pattern": "mlp", "lr_scal": 2.0}]}, "config key 'optim.groups[0]': unknown fields"),
    ({"optim.groups": [{"pattern": "("}]}, "config key 'optim.groups[0].pattern': invalid regex"),
])
def test_validation_names_the_key(override, message):
  with pytest.raises(ConfigError) as error:
    cli.load_config("configs/lm.py:small", override)
  assert message in str(error.value)
  assert "\n" not in str(error.value)


def test_mesh_minus_one_takes_the_remaining_devices():
  config, _ = cli.load_config("configs/lm.py:small", {"mesh.data": -1, "mesh.tensor": 2})
  assert validate.mesh_shape(config, 8) == {"data": 4, "fsdp": 1, "tensor": 2}
  with pytest.raises(ConfigError, match="mesh"):
    validate.mesh_shape(config, 3)


def test_cli_bad_override_exits_2_with_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  result = run_cli(*TINY, "--workdir", workdir, "--config.train.stepz=3", check=False)
  assert result.returncode == 2
  assert result.stderr.strip() == "error: config key 'train.stepz' does not exist"
  assert not workdir.exists()


def test_cli_unknown_config_file_exits_2(tmp_path):
  result = run_cli("--config", "configs/nope.py", "--workdir", tmp_path / "r", check=False)
  assert result.returncode == 2 and "configs/nope.py" in result.stderr


def test_sweep_names_are_filesystem_safe_and_follow_the_config():
  runs, _ = cli.plan_train(["--config", "configs/lm.py:tiny", "--sweep", "--workdir", "runs/sw"])
  names = [w.split("/")[-1] for _, w in runs]
  assert names == ["optim.lr=0.001,seed=0", "optim.lr=0.001,seed=1", "optim.lr=0.003,seed=0",
                   "optim.lr=0.003,seed=1"]
  assert [(c.optim.lr, c.seed) for c, _ in runs] == [(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)]
  assert cli.sweep_name({"sample.prompt": "a/b c"}) == "sample.prompt=a_b_c"


def test_config_json_round_trip(tmp_path):
  config, _ = cli.load_config("configs/lm.py:small", {})
  path = tmp_path / "config.json"
  path.write_text(json.dumps(config_loader.to_dict(config)))
  assert config_loader.to_dict(config_loader.from_json(path)) == config_loader.to_dict(config)


def test_lm_small_takes_tensor_axes_of_2_and_4():
  for tensor in (2, 4):
    config, _ = cli.load_config("configs/lm.py:small", {"mesh.tensor": tensor, "model.vocab_size": 384})
    assert validate.validate(config, device_count=8) is config


@pytest.mark.parametrize("spec", ["configs/lm.py:tiny", "configs/lm.py:small", "configs/lm.py:base",
                                  "configs/stem.py:small", "configs/stem.py:small_dense", "configs/stem.py:base",
                                  "configs/stem.py:base_dense", "configs/quickstart.py", "configs/gg.py"])
def test_every_config_takes_two_steps(spec):
  """Step-derived keys (warmup, ...) follow train.steps, so a smoke run of any config passes validation."""
  config, _ = cli.load_config(spec, {"train.steps": 2})
  assert config.optim.warmup_steps <= 2


def test_stem_sweep_follows_the_variants_depth():
  from tessera.models import stem
  for variant, halves in (("small", (1, 3)), ("base", (1, 3, 5, 7))):
    runs, _ = cli.plan_train(["--config", f"configs/stem.py:{variant}", "--sweep", "--workdir", "runs/sw"])
    layers = [stem.stem_layers(c.model) for c, _ in runs]
    assert layers[0] == () and layers[2] == halves and len(layers[3]) == runs[0][0].model.n_layers
