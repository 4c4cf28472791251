"""Acceptance check 5 (zett.md): after the identity stage the hypernetwork applied to T_old reproduces E_in/E_out
(relative L2 < 0.1) and the LM's held-out bits per byte with predicted embeddings is within 5% of the original.

Slow (~2-3 min): a tiny base, then 400 identity steps. Run at h = 2d: with the spec's h = d the pooled vector is a
d-wide bottleneck for the 2d-wide [E_in, E_out] of an untied LM, and a barely-trained base (independent random
E_in, E_out) cannot pass through it (measured: relative error 0.17 at h = d, 0.004 at h = 2d)."""
import sys

import numpy as np
import pytest

from tessera_testing import ROOT, run_cli


@pytest.mark.slow
def test_identity_stage_reproduces_the_original_embeddings_and_bits_per_byte(tmp_path):
  base, zett = tmp_path / "base", tmp_path / "zett"
  run_cli("--config", "configs/zett.py:tiny_base", "--workdir", base, "--config.eval.every_steps=0",
          "--config.sample.max_new_tokens=0")
  run_cli("--config", "configs/zett.py:tiny", "--workdir", zett, f"--config.init.workdir={base}",
          "--config.train.steps=400", "--config.data.zett.identity_steps=400", "--config.optim.warmup_steps=40",
          "--config.optim.lr=1e-2", "--config.optim.zett.two_stage=False",  # one warmup of 40 steps, then cosine
          "--config.model.zett.hidden=128", "--config.model.zett.ffn=256",
          "--config.eval.every_steps=0", "--config.checkpoint.every_steps=400")
  sys.path.insert(0, str(ROOT / "scripts"))
  import eval_tokenizer_transfer as ett
  ev = ett.Evaluator(zett, 20000)
  vocab = ev.old.get_vocab_size()
  e_in, e_out, arrays = ev.tables("hypernet", ev.old)
  for pred, table in ((e_in, ev.model.e_in()), (e_out, ev.model.e_out())):
    table = np.asarray(table)[:vocab]
    assert np.linalg.norm(pred - table) / np.linalg.norm(table) < 0.1
  original, predicted = ev.original(), ev.score(ev.old, e_in, e_out, arrays)
  for domain in ("prose", "code"):
    assert predicted[domain]["bits_per_byte"] / original[domain]["bits_per_byte"] - 1 < 0.05
