"""scripts/stem_results.py renders docs/results/stem.md from its data file alone: mean ± sample std (ddof=1) over
seeds, per-seed paired deltas against dense, and every row of the spec either in the table or listed as not run."""
import sys

import numpy as np

from tessera_testing import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import stem_results  # noqa: E402


def _unit(row, seed, final):
  return {"row": row, "seed": seed, "eval_loss": {"50": final + 1.0, "100": final}, "final_eval_loss": final,
          "max_loss_jump_after_warmup": 0.2, "tokens_per_second_median": 1000.0, "cpu_s": 300.0, "wall_s": 900.0,
          "grad_norm": {"default": {"1": 8.0, "51": 0.5}, "group0": {"1": 0.1, "51": 0.05}}}


def test_page_has_sample_std_paired_deltas_and_names_rows_not_run(tmp_path):
  counts = {"params_stored": 10, "params_active": 8, "flops_per_token_paper": 16, "train_flops_per_token": 60}
  facts = lambda row, layers: {"label": stem_results.ROWS[row][0], "stem_layers": layers, "table_init": "x",
                               "vocab_size": 384, "counts": counts, "tokens_per_step": 4096, "warmup_steps": 10}
  data = {"setup": {"steps": 100, "seeds": 3, "planned_rows": ["dense", "stem_1_2"], "cpu": "test", "xla_flags": ""},
          "rows": {"dense": facts("dense", []), "stem_1_2": {**facts("stem_1_2", [1, 3]), "rows_touched": 0.2}},
          "units": {}, "commands": ["scripts/train ..."]}
  dense, stem = [2.0, 2.2, 2.1], [1.9, 2.0, 2.05]
  for seed in range(3):
    data["units"][f"dense/s{seed}"] = _unit("dense", seed, dense[seed])
    data["units"][f"stem_1_2/s{seed}"] = _unit("stem_1_2", seed, stem[seed])
  stem_results.render(data, tmp_path)
  page = (tmp_path / "stem.md").read_text()
  delta = np.subtract(stem, dense)
  assert f"{np.mean(dense):.4f} ± {np.std(dense, ddof=1):.4f} (n=3)" in page
  assert f"{delta.mean():.4f} ± {delta.std(ddof=1):.4f}" in page and "lower than dense in 3 of 3 seeds" in page
  not_run = next(line for line in page.splitlines() if line.startswith("Not run:"))
  for row in ("stem_1_2_normal1", "stem_1_3", "stem_all"):
    assert stem_results.ROWS[row][0] in not_run
  assert (tmp_path / "stem_loss.png").stat().st_size > 10_000
