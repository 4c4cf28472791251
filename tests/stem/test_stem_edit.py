"""Knowledge editing: id alignment rules (stem.md §9), the mean fallback, and the `scripts/edit_knowledge` command
end to end on a freshly trained tiny STEM run (slow). Edited decoding: tests/generation/test_stem_edit_engine.py."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tessera_testing import ROOT, run_cli
from tessera.models import stem_edit


def test_occurrences_and_replace():
  tokens = [5, 1, 2, 7, 1, 2, 1]
  assert stem_edit.occurrences(tokens, [1, 2]) == [1, 4]
  assert stem_edit.replace_ids(tokens, [1, 2], [8, 9]).tolist() == [5, 8, 9, 7, 8, 9, 1]


def test_aligned_target_pads_by_repeating_and_keeps_the_longest_tokens():
  assert stem_edit.aligned_target([1, 2, 3], [8, 9]) == [8, 9, 8]
  token_bytes = {10: 1, 11: 4, 12: 2, 13: 4}
  assert stem_edit.aligned_target([1, 2], [10, 11, 12, 13], token_bytes) == [11, 13]
  assert stem_edit.aligned_target([1, 2], [12, 10, 11], token_bytes) == [12, 11]  # original order kept


def test_edit_falls_back_to_mean_when_counts_differ():
  tokens = [4, 1, 2, 4]
  stem_ids, override, mode = stem_edit.edit(tokens, [1, 2], [7, 8, 9])
  assert mode == "mean" and stem_ids.tolist() == tokens
  ids_TxK, weights_TxK = override
  assert ids_TxK[1].tolist() == [7, 8, 9] and np.allclose(weights_TxK[1:3], 1 / 3)
  assert (weights_TxK[[0, 3]] == 0).all()
  assert stem_edit.edit(tokens, [1, 2], [7, 8])[2] == "replace"
  assert stem_edit.edit(tokens, [1, 2], [7, 8], mode="mean")[2] == "mean"


@pytest.mark.slow  # trains a tiny STEM run through the CLI first (~1 min)
def test_edit_knowledge_command(tmp_path):
  workdir = tmp_path / "stem"
  run_cli("--config", "configs/stem.py:small", "--workdir", workdir, "--config.train.steps=3",
          "--config.optim.warmup_steps=1", "--config.train.seq_len=32", "--config.train.batch_size=4",
          "--config.model.d_model=32", "--config.model.d_ff=64", "--config.eval.batches=1",
          "--config.sample.max_new_tokens=2")
  command = [sys.executable, str(ROOT / "scripts" / "edit_knowledge.py"), "--workdir", str(workdir), "--prompt",
             "Country: Spain. Capital:", "--max-new-tokens", "4", "--json"]
  out = subprocess.run(command + ["--swap", "Spain=Germany"], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  result = json.loads(out.stdout)
  assert result["mode"] == "mean" and "using the mean" in out.stderr  # 5 vs 7 byte tokens
  assert result["max_abs_logprob_change_next_token"] > 0
  same = subprocess.run(command + ["--swap", "Spain=Italy", "--mode", "replace"], cwd=ROOT, capture_output=True,
                        text=True)
  assert same.returncode == 0 and json.loads(same.stdout)["mode"] == "replace"
  aligned = subprocess.run(command + ["--swap", "Spain=Germany", "--mode", "align"], cwd=ROOT, capture_output=True,
                           text=True)  # 7 target tokens fitted to 5: the longest by bytes, in order
  assert aligned.returncode == 0 and json.loads(aligned.stdout)["mode"] == "align", aligned.stderr
  assert json.loads(aligned.stdout)["target_tokens"] == 5
  missing = subprocess.run(command + ["--swap", "France=Italy"], cwd=ROOT, capture_output=True, text=True)
  assert missing.returncode == 2 and "does not occur" in missing.stderr
