"""The AOT memory check refuses a shape that cannot fit before anything is written (issue 15)."""
import os

import jax
import ml_collections

from tessera.trainer import cli
from tessera.trainer import memory_check


def test_seq_len_100000_is_refused_before_anything_is_written(tmp_path, capsys):
  code = cli.main(["train", "--config", "configs/lm.py:tiny", "--workdir", str(tmp_path / "w"),
                   "--config.train.seq_len=100000"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  assert "'train.batch_size'=8" in err[0] and "'train.seq_len'=100000" in err[0] and " bytes " in err[0]
  assert not (tmp_path / "w").exists()


def test_an_explicit_budget_applies(tmp_path, capsys):
  code = cli.main(["train", "--config", "configs/lm.py:tiny", "--workdir", str(tmp_path / "w"),
                   "--config.train.memory_budget_gb=0.001"])
  err = capsys.readouterr().err
  assert code == 2 and "train.memory_budget_gb" in err and "train.seq_len" in err
  assert not (tmp_path / "w").exists()


def test_cpu_budget_is_80_percent_of_ram_over_local_devices():
  config = ml_collections.ConfigDict({"train": {"memory_budget_gb": 0.0}})
  budget, source = memory_check.budget_bytes(config)
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  assert jax.devices()[0].platform == "cpu"
  assert budget == 0.8 * ram / jax.local_device_count() and "80%" in source
