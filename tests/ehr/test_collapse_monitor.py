"""jepa_ehr.md acceptance check 7 (collapse monitor) on the `tiny` config through the CLI, with what we found:

As specified ("the mean per-dim std of ẑ stays > 0.05 through training") it fails: ẑ's per-dim std across the batch
of 8 dips under 0.05 in ~8% of steps (measured, tiny for 300 steps on the 4,000-subject set: 24 of 300 steps,
minimum 0.037, median 0.074). Not a collapse: the LN target that ẑ is fit to keeps a per-dim std of 0.41-0.90 (0.62
at the end), and the online z_ctx narrows as it does in SFT-only runs (median 0.23; `small` SFT-only: 0.2-0.5), an
effect of next-token training on the cut token's state. The predictor regresses to the batch mean of a target that
z_ctx barely predicts at this scale: L_JEPA ends at 0.23 ≈ 0.5·σ² for the target's spread σ ≈ 0.62, what predicting
the mean costs (smooth-L1 is 0.5·x² below 1); so ẑ varies little. Lifting it
would take the V-JEPA variance term (`loss.jepa.reg_coeff`, spec default 0), a change of method: the check stays
an xfail that turns into a failure the day it passes.
"""
import json

import numpy as np
import pytest

from tessera_testing import run_cli


@pytest.fixture(scope="module")
def monitor(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("c7") / "tiny"
  run_cli("--config", "configs/ehr_jepa.py:tiny", "--workdir", workdir, "--config.data.synth_subjects=600",
          "--config.probe.at_end=False", "--config.train.log_every_steps=1", "--config.eval.every_steps=1000",
          "--config.checkpoint.every_steps=1000")
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {key: np.asarray([r[f"train/{key}"] for r in rows if f"train/{key}" in r])
          for key in ("z_hat_std_mean", "z_tgt_ln_std_mean", "z_ctx_std_mean")}


@pytest.mark.slow
def test_no_collapse_of_the_target_and_z_hat_never_vanishes(monitor):
  assert len(monitor["z_hat_std_mean"]) == 200
  assert monitor["z_tgt_ln_std_mean"].min() > 0.3, monitor["z_tgt_ln_std_mean"].min()
  assert monitor["z_hat_std_mean"].min() > 0.01 and np.median(monitor["z_hat_std_mean"]) > 0.05


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="check 7 as specified: ẑ's std dips under 0.05 (see the module docstring)")
def test_check7_z_hat_std_stays_above_0_05(monitor):
  assert monitor["z_hat_std_mean"].min() > 0.05
