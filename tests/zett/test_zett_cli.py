"""ZeTT through the real CLI (issue 13): a tiny base LM with its cached BPE, then the tiny hypernetwork on it
(init.workdir + init.map). Acceptance check 4 (the LM bit-identical after training, only the hypernetwork and the
fallback rows change) and check 2's "rescalers bit-identical after training"; the identity stage comes first."""
import json
import subprocess

import numpy as np
import pytest

from tessera_testing import ROOT, run_cli
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
  lrs = [train[s]["train/zett_lr"] for s in range(1, STEPS + 1)]  # §6: 0 at the start of each stage
  assert lrs[0] == 0.0 and lrs[1] == 0.0 and all(lr > 0 for lr in lrs[2:])
  summary = json.loads((zett / "summary.json").read_text())
  assert np.isfinite(summary["eval_loss"])
  assert json.loads((zett / "init.json").read_text())["unused_source"] == []
  base = runs[0]  # the old tokenizer is the base run's own, whatever the cache holds now
  assert (zett / "data" / "tokenizer.json").read_bytes() == (base / "data" / "tokenizer.json").read_bytes()


def _transfer_main():
  import importlib.util
  spec = importlib.util.spec_from_file_location("transfer_tokenizer", ROOT / "scripts" / "transfer_tokenizer.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main


@pytest.fixture(scope="module")
def target_tokenizer(runs):
  from tessera.data import text_tokenizer, zett_corpus
  path = runs[1].parent / "code_bpe.json"
  code = [d.text for d in zett_corpus.train_docs() if not zett_corpus.is_prose(d)][:5]
  text_tokenizer.train("bpe", code, 400).save(str(path))
  return path


def test_transfer_writes_a_normal_run_that_evaluates(runs, target_tokenizer):
  _, zett = runs
  out = zett.parent / "newtok"
  result = subprocess.run(["scripts/transfer_tokenizer", "--workdir", str(zett), "--tokenizer",
                           str(target_tokenizer), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  # 400 trained tokens, plus whichever special tokens prepared data adds (<pad>, <bos>, <unk>: data.text_tokenizer)
  assert summary["vocab_size"] == summary["target_tokens"] >= 400 and summary["special_rows"] >= 1
  config = json.loads((out / "config.json").read_text())
  assert config["model"]["name"] == "decoder" and config["model"]["vocab_size"] == summary["vocab_size"]
  assert json.loads((out / "data" / "stats.json").read_text())["vocab_size"] == summary["vocab_size"]
  assert (out / "tokenizer.json").is_file() and (out / "data" / "stats.json").is_file()
  evaluated = subprocess.run(["scripts/eval", "--workdir", str(out), "--batches", "1"], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  assert np.isfinite(json.loads(evaluated.stdout.strip().splitlines()[-1])["eval_loss"])


@pytest.mark.parametrize("case", ["not_json", "too_large", "not_zett", "out_exists"])
def test_transfer_bad_input_is_one_line_exit_2_nothing_written(runs, target_tokenizer, tmp_path, case, capsys):
  base, zett = runs
  bad = tmp_path / "bad.json"
  bad.write_text("{not a tokenizer")
  out = tmp_path / "out"
  argv = {"not_json": ["--workdir", str(zett), "--tokenizer", str(bad)],
          "too_large": ["--workdir", str(zett), "--tokenizer", str(target_tokenizer), "--vocab-size", "128"],
          "not_zett": ["--workdir", str(base), "--tokenizer", str(target_tokenizer)],
          "out_exists": ["--workdir", str(zett), "--tokenizer", str(target_tokenizer)]}[case]
  if case == "out_exists":
    out.mkdir()
  before = sorted(p.name for p in tmp_path.iterdir())
  assert _transfer_main()(argv + ["--out", str(out)]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and len(err.splitlines()) == 1
  assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_eval_tokenizer_transfer_reports_every_method_and_resumes(runs, target_tokenizer, tmp_path):
  _, zett = runs
  results = tmp_path / "zett.md"
  args = ["scripts/eval_tokenizer_transfer", "--workdir", str(zett), "--tokenizers", str(target_tokenizer),
          "--continue-steps", "0", "--max-chars", "3000", "--out-dir", str(tmp_path), "--results", str(results)]
  first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-2000:]
  stored = json.loads((tmp_path / "results.json").read_text())
  methods = stored["zero_shot"][target_tokenizer.stem]
  assert sorted(methods) == ["fvt", "hypernet", "lexical", "random"]
  for r in [stored["original"], *methods.values()]:
    for domain in ("prose", "code"):
      assert 0 < r[domain]["bits_per_byte"] < 30 and 0 < r[domain]["tokens_per_byte"] <= 1
  assert "| code_bpe | " in results.read_text() and "T_old (original)" in results.read_text()
  again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)  # nothing left to measure
  assert again.returncode == 0 and "hypernet:" not in again.stderr
  assert json.loads((tmp_path / "results.json").read_text())["zero_shot"] == stored["zero_shot"]


@pytest.mark.slow  # ~1.5 min: a run killed mid-way and resumed, against the uninterrupted `runs` fixture
def test_resume_after_sigkill_reproduces_the_run_bit_for_bit(runs, tmp_path):
  """Acceptance check 6 through the CLI: the resumed run samples the same tokenizers (the queue is rebuilt from the
  checkpointed batch index), so its params and per-step losses equal the uninterrupted run's."""
  import os
  import signal
  import sys
  base, zett = runs
  workdir = tmp_path / "killed"
  args = ["--config", "configs/zett.py:tiny", "--workdir", str(workdir), f"--config.init.workdir={base}",
          f"--config.train.steps={STEPS}", "--config.checkpoint.every_steps=4", "--config.eval.every_steps=0",
          "--config.train.log_every_steps=1"]
  proc = subprocess.Popen([sys.executable, "-m", "tessera.trainer", *args], cwd=ROOT, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=subprocess.PIPE,
                          stdout=subprocess.DEVNULL)
  for line in proc.stderr:
    if line.startswith("step 6/"):
      proc.send_signal(signal.SIGKILL)
      break
  proc.stderr.read()
  assert proc.wait(timeout=300) == -signal.SIGKILL
  run_cli(*args)
  resumed, reference = restore((workdir, STEPS), (zett, STEPS))
  for key in reference:
    if not key.startswith("['rng']"):
      np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)
  rows = lambda w: {json.loads(l)["step"]: json.loads(l).get("train/loss")
                    for l in (w / "metrics.jsonl").read_text().splitlines()}
  got, want = rows(workdir), rows(zett)
  assert all(got[s] == want[s] for s in range(5, STEPS + 1))


def test_eval_tokenizer_transfer_refuses_a_run_that_is_not_zett(runs, target_tokenizer, tmp_path, capsys):
  import importlib.util
  spec = importlib.util.spec_from_file_location("eval_tokenizer_transfer",
                                                ROOT / "scripts" / "eval_tokenizer_transfer.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  base, _ = runs
  bad = tmp_path / "bad.json"
  bad.write_text("[]")
  for argv in (["--workdir", str(base), "--tokenizers", str(target_tokenizer)],
               ["--workdir", str(runs[1]), "--tokenizers", str(bad)]):
    assert module.main(argv + ["--out-dir", str(tmp_path / "o"), "--results", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
  assert not (tmp_path / "o").exists() and not (tmp_path / "r.md").exists()
