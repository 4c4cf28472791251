"""configs/ehr_jepa.py through the real CLI: the quickstart generates the synthetic set, trains, probes at the end
and prints the issue's probe lines; scripts/probe on the finished run prints the same lines; every variant
validates at train.steps=2; bad probe input is one line and exit 2 (issue 14)."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from tessera.trainer import cli
from tessera.trainer import validate
from tessera.trainer import zoo
from tessera_testing import ROOT, run_cli

LINE = re.compile(r"^task=(\w+) node=(\S+) auroc=(\d\.\d{3}) auroc_lo=(\d\.\d\d) auroc_hi=(\d\.\d\d) "
                  r"auprc=(\d\.\d\d) n=(\d+)$")
SMALL = ("--config.train.steps=6", "--config.data.synth_subjects=100", "--config.probe.bootstrap=20",
         "--config.probe.iterations=20", "--config.checkpoint.every_steps=3", "--config.eval.batches=1")


def probe_lines(stdout):
  return [line for line in stdout.splitlines() if line.startswith("task=")]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ehr") / "quick"
  result = run_cli("--config", "configs/ehr_jepa.py:quickstart", "--workdir", workdir, *SMALL)
  return workdir, result


def test_quickstart_trains_probes_and_prints_the_lines(quickstart):
  workdir, result = quickstart
  lines = probe_lines(result.stdout)
  assert lines and all(LINE.match(line) for line in lines), result.stdout
  assert "nan" not in result.stdout.lower()
  assert {LINE.match(line).group(1) for line in lines} >= {"short_term", "long_term_slope"}
  for name in ("probe.json", "probe.md", "probe.png"):
    assert (workdir / "probe" / name).stat().st_size > 0
  report = json.loads((workdir / "probe" / "probe.json").read_text())
  assert report["objective"] == "sft+jepa_joint"
  assert {r["encoder"] for r in report["results"]} == {"online", "target", "last_value"}
  summary = json.loads((workdir / "summary.json").read_text())
  assert any(k.startswith("probe/long_term_slope/") for k in summary)
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  for key in ("train/jepa_loss", "train/z_hat_std_mean", "train/z_ctx_std_min", "train/ema_gap"):
    assert all(np.isfinite(m[key]) for m in metrics if key in m) and any(key in m for m in metrics), key


def test_scripts_probe_repeats_the_end_of_run_probe(quickstart, tmp_path):
  workdir, result = quickstart
  out = subprocess.run([sys.executable, "-m", "tessera.losses.ehr_probe_cli", "--workdir", str(workdir), "--out",
                        str(tmp_path / "again"), "--bootstrap", "20", "--tasks", "short_term"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr
  assert probe_lines(out.stdout) == [line for line in probe_lines(result.stdout) if "task=short_term " in line]
  assert (tmp_path / "again" / "probe.png").is_file()


def test_probe_bad_workdir_is_one_line_exit_2(tmp_path):
  out = subprocess.run([sys.executable, "-m", "tessera.losses.ehr_probe_cli", "--workdir", str(tmp_path / "none")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "config.json" in out.stderr
  assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("variant", ["quickstart", "tiny", "small", "sft_only"])
def test_every_variant_validates_at_two_steps(variant):
  config, _ = cli.load_config(f"configs/ehr_jepa.py:{variant}", {"train.steps": 2})
  assert config.optim.warmup_steps <= 2 and config.sample.max_new_tokens == 0
  with config.unlocked():
    config.model.vocab_size = 128
  validate.validate(config)
  zoo.check(config)
  assert (config.loss.jepa.weight == 0) == (variant == "sft_only")


def test_bad_schedule_is_one_line_exit_2_nothing_written(tmp_path):
  result = run_cli("--config", "configs/ehr_jepa.py:tiny", "--workdir", tmp_path / "w",
                   "--config.loss.jepa.schedule=alternate", check=False)
  assert result.returncode == 2 and "loss.jepa.schedule" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "w").exists()


def restore(workdir, step):
  """The saved state as flat numpy (plain Orbax, in a fresh process)."""
  code = f"""
import sys, jax, numpy as np, orbax.checkpoint as ocp
state = ocp.PyTreeCheckpointer().restore({str(workdir / 'checkpoints' / str(step) / 'state')!r})
leaves = jax.tree_util.tree_leaves_with_path(state)
np.savez(sys.argv[1], **{{jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}})
"""
  out = workdir.parent / f"{workdir.name}_{step}.npz"
  subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=ROOT)
  return dict(np.load(out))


@pytest.mark.slow
def test_resume_restores_the_ema_target_and_the_sampler_bitwise(quickstart, tmp_path):
  """Spec check 5 (target restored from checkpoint bit-identically) and 3 (resume restores the sampler): a run
  resumed from step 3 ends at step 6 with the uninterrupted run's state, model state included."""
  import shutil
  workdir, _ = quickstart
  resumed = tmp_path / "resumed"
  shutil.copytree(workdir, resumed, ignore=shutil.ignore_patterns("6", "summary.json", "probe"))
  run_cli("--config", "configs/ehr_jepa.py:quickstart", "--workdir", resumed, *SMALL)
  reference, got = restore(workdir, 6), restore(resumed, 6)
  assert any("['model_state']['target']" in k for k in reference)
  assert reference.keys() == got.keys()
  for key in reference:
    np.testing.assert_array_equal(got[key], reference[key], err_msg=key)


MIMIC = ROOT.parent / "shared" / "data" / "mimic-iv-demo-meds"


@pytest.mark.slow
@pytest.mark.skipif(not MIMIC.is_dir(), reason="no MIMIC-IV demo in shared/data")
def test_mimic_demo_smoke_tokenize_pretrain_200_steps_probe(tmp_path):
  """Spec check 9: prepare -> tiny for 200 steps -> probes give finite AUROCs for the derived tasks."""
  from tessera.data import prepare_meds
  prepare_meds.prepare(["--input", str(MIMIC), "--out", str(tmp_path / "data")])
  result = run_cli("--config", "configs/ehr_jepa.py:tiny", "--workdir", tmp_path / "run",
                   f"--config.data.path={tmp_path / 'data'}", "--config.data.horizon_days=30",
                   "--config.train.steps=200", "--config.probe.bootstrap=200")
  lines = probe_lines(result.stdout)
  assert lines and all(LINE.match(line) for line in lines), result.stdout + result.stderr
  tasks = {LINE.match(line).group(1) for line in lines}
  skipped = {t for t in ("in_hospital_mortality", "icu_admission", "long_length_of_stay", "readmission_30d",
                         "mortality_1y") if f"task={t} " in result.stderr}
  assert tasks | skipped >= {"icu_admission", "long_length_of_stay", "readmission_30d"}, result.stderr


@pytest.mark.slow
def test_probe_on_a_run_without_jepa_state_works_labelled_sft_only(tmp_path):
  """Issue 14 "bad input": a plain decoder LM trained on prepared MEDS is probed (no target row), labelled."""
  from tessera.data import meds_synth, prepare_meds
  meds = meds_synth.write_dataset(tmp_path / "meds", num_subjects=100, seed=0)
  prepare_meds.prepare(["--input", str(meds), "--out", str(tmp_path / "data")])
  run_cli("--config", "configs/lm.py:tiny", "--workdir", tmp_path / "lm", f"--config.data.path={tmp_path / 'data'}",
          "--config.train.steps=4", "--config.sample.max_new_tokens=0")
  out = subprocess.run([sys.executable, "-m", "tessera.losses.ehr_probe_cli", "--workdir", str(tmp_path / "lm"),
                        "--bootstrap", "20"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr
  assert probe_lines(out.stdout) and all(LINE.match(line) for line in probe_lines(out.stdout))
  report = json.loads((tmp_path / "lm" / "probe" / "probe.json").read_text())
  assert report["objective"] == "sft_only (no JEPA state)"
  assert "target" not in {r["encoder"] for r in report["results"]}
