"""metrics.wandb=True: a second sink that works offline when wandb is installed, one config error when it is not;
`true`/`false` spelled in lowercase are booleans."""
import importlib.util
import json
import os

import pytest

from tessera_testing import TINY, run_cli
from tessera.trainer import config_loader

HAS_WANDB = importlib.util.find_spec("wandb") is not None


def test_lowercase_booleans():
  assert config_loader.parse_value("true") is True and config_loader.parse_value("FALSE") is False
  assert config_loader.parse_value("True") is True and config_loader.parse_value("truth") == "truth"


@pytest.mark.skipif(HAS_WANDB, reason="wandb is installed")
def test_missing_wandb_is_one_config_error(tmp_path):
  result = run_cli(*TINY, "--workdir", tmp_path / "run", "--config.metrics.wandb=true", "--config.train.steps=2",
                   check=False)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines()[-1].endswith("needs the wandb package (pip install wandb); "
                                                          "WANDB_MODE=offline logs without an account")
  assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not HAS_WANDB, reason="wandb (an extra) is not installed")
def test_wandb_offline_sink(tmp_path):
  workdir = tmp_path / "run"
  env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}
  run_cli(*TINY, "--workdir", workdir, "--config.metrics.wandb=True", "--config.train.steps=3",
          "--config.sample.max_new_tokens=0", env=env)
  runs = list((workdir / "wandb").glob("offline-run-*"))
  assert runs, os.listdir(workdir)
  assert any(p.suffix == ".wandb" for p in runs[0].iterdir())
  assert json.loads((workdir / "summary.json").read_text())["step"] == 3
