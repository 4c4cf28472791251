"""ZeTT through the real CLI (issue 13): a tiny base LM with its cached BPE, then the tiny hypernetwork on it
(init.workdir + init.map). Acceptance check 4 (the LM bit-identical after training, only the hypernetwork and the
fallback rows change) and check 2's "rescalers bit-identical after training"; the identity stage comes first."""
import json

import numpy as np
import pytest

from tessera_testing import run_cli
from zett_helpers import restore

STEPS = 8


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("zett")
  base, zett = root / "base", root / "zett"
  run_cli("--config", "configs/zett.py:tiny_base", "--workdir", base, "--config.train.steps=6",
          "--config.eval.every_steps=0", "--config.sample.max_new_tokens=0")
  run_cli("--config", "configs/zett.py:tiny", "--workdir", zett, f"--config.init.workdir={base}",
          f"--config.train.steps={STEPS}", "--config.checkpoint.every_steps=4", "--config.eval.every_steps=0")
  return base, zett


def test_lm_bit_identical_and_only_hypernet_and_fallback_change(runs):
  base, zett = runs
  source, middle, final = restore((base, 6), (zett, 4), (zett, STEPS))
  lm_keys = [k for k in final if k.startswith("['frozen']['lm']")]
  assert len(lm_keys) == len([k for k in source if k.startswith("['params']")])
  for key in lm_keys:
    np.testing.assert_array_equal(final[key], source[key.replace("['frozen']['lm']", "['params']")], err_msg=key)
  assert not any("['lm']" in k for k in final if k.startswith("['opt_state']"))
  trained = [k for k in final if k.startswith("['params']")]
  assert trained and all(k.startswith(("['params']['hypernet']", "['params']['fallback']")) for k in trained)
  assert any(not np.array_equal(final[k], middle[k]) for k in trained if "hypernet" in k)
  rescalers = [k for k in final if k.startswith("['model_state']['rescale']")]
  assert len(rescalers) == 7 and final["['model_state']['rescale']['fitted']"] == 1.0
  for key in rescalers:
    np.testing.assert_array_equal(final[key], middle[key], err_msg=key)


def test_identity_stage_then_lm_loss_with_bits_per_byte(runs):
  _, zett = runs
  rows = [json.loads(line) for line in (zett / "metrics.jsonl").read_text().splitlines()]
  train = {r["step"]: r for r in rows if "train/loss" in r}
  assert train[1]["train/stage"] == 1.0 and train[1]["train/loss_identity"] > 0
  later = [train[s] for s in range(2, STEPS + 1)]
  assert all(r["train/stage"] == 0.0 and r["train/loss_lm"] > 0 for r in later)
  assert all(0 < r["train/bits_per_byte"] < 20 and 0 < r["train/tokens_per_byte"] < 1 for r in later)
  summary = json.loads((zett / "summary.json").read_text())
  assert np.isfinite(summary["eval_loss"])
  assert json.loads((zett / "init.json").read_text())["unused_source"] == []
