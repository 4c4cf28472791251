"""scripts/gg_experiments.py renders docs/results/gg_prior.md from its data file alone: mean ± sample std (ddof=1),
paired deltas against ν = 2, and the units not run listed with their seed counts."""
import sys

import numpy as np

from tessera_testing import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import gg_experiments  # noqa: E402


def test_page_has_sample_std_paired_deltas_and_lists_what_was_not_run(tmp_path):
  data = {"setup": {"config": "configs/lm.py:tiny", "steps": 20, "seeds": 3, "eval_batches": 4, "tokens_per_step": 512,
                    "default_lam": 2.383, "cpu": "test", "xla_flags": ""}, "units": {}, "commands": []}
  finals = {name: [3.0 + 0.1 * i + 0.01 * s for s in range(3)] for i, name in enumerate(gg_experiments.INITS)}
  for name, values in finals.items():
    for seed, final in enumerate(values):
      curve = {str(step): final + 1.0 - step / 20 for step in (2, 10, 20)}
      data["units"][f"init/{name}/s{seed}"] = {"eval_curve": curve, "eval_loss": final, "cpu_s": 30.0, "nu_hat": 1.0,
                                                "beta_hat": 0.1, "entropy_bits": 10.0, "expgolomb_bits": 16.0,
                                                "sparsity": 0.0}
  gg_experiments.render(data, tmp_path)
  page = (tmp_path / "gg_prior.md").read_text()
  last = [v + 1.0 - 1.0 for v in finals["gg_nu0.5"]]
  assert f"{np.mean(last):.3f} ± {np.std(last, ddof=1):.3f}" in page
  delta = np.subtract(finals["gg_nu0.5"], finals[gg_experiments.BASE_INIT])
  assert f"| {delta.mean():.4f} ± {delta.std(ddof=1):.4f} |" in page
  assert "backslash/x0.25 (0 of 3 seeds)" in page and "quant/baseline/rf8 (0 of 3 seeds)" in page
  assert (tmp_path / "gg_prior_init.png").stat().st_size > 10_000
