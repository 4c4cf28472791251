"""A tiny run prints the MaxText-style line every train.log_every_steps steps, once each, with the values that
metrics.jsonl holds; MFU is against the cached CPU peak (the same peak after a resume)."""
import json
import os
import re

import pytest

from tb_read import hparams, text
from tessera_testing import TINY, run_cli
from tessera.trainer import cpu_peak, metrics as metrics_lib

FIELDS = ("loss", "step", "tok/s", "tok/s/device", "TFLOP/s/device", "MFU", "lr", "grad norm")


def step_lines(stderr):
  return [line for line in stderr.splitlines() if re.match(r"step \d+/\d+ \|", line)]


def parse(line):
  head, *parts = line.split(" | ")
  return int(head.split()[1].split("/")[0]), dict(p.rsplit(" ", 1) for p in parts)


def seed_peak(flops):
  path = cpu_peak.cache_path()
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({cpu_peak.cpu_model(): {"float32": flops}}))


def run(workdir, steps, every):
  return run_cli(*TINY, "--workdir", workdir, f"--config.train.steps={steps}",
                 f"--config.train.log_every_steps={every}", "--config.eval.every_steps=0",
                 "--config.sample.max_new_tokens=0", env={"XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]})


def check_run(result, workdir, steps, every, first):
  lines = step_lines(result.stderr)
  expected = sorted({first, steps} | set(range(every, steps + 1, every)) - set(range(first)))
  assert [parse(line)[0] for line in lines] == expected, result.stderr
  records = {r["step"]: r for r in metrics_lib.read_metrics(workdir) if "train/loss" in r}
  for line in lines:
    step, fields = parse(line)
    assert tuple(k for k in fields if k != "ETA") == FIELDS
    record = records[step]
    assert fields["loss"] == f"{record['train/loss']:.4f}"
    assert fields["lr"] == f"{record['train/lr']:.3e}" and fields["grad norm"] == f"{record['train/grad_norm']:.3f}"
    assert fields["MFU"] == f"{record['train/mfu']:.1%}"
    assert fields["tok/s/device"] == f"{record['train/tokens_per_second_per_device']:,.0f}"
  for record in records.values():  # MFU against the seeded peak, not a fresh measurement
    assert record["train/mfu"] == pytest.approx(record["train/tflops_per_device"] * 1e12 / 2e11)


def test_step_line_every_n_steps_once_each(tmp_path):
  seed_peak(2e11)
  result = run(tmp_path / "run", 5, 2)
  assert "peak 200.0 GFLOP/s/device (measured once for" in result.stderr
  check_run(result, tmp_path / "run", 5, 2, 1)


@pytest.mark.slow
def test_resume_keeps_the_peak_and_prints_each_line_once(tmp_path):
  seed_peak(2e11)
  run(tmp_path / "run", 4, 2)
  result = run(tmp_path / "run", 7, 3)
  assert "peak 200.0 GFLOP/s/device (measured once for" in result.stderr
  check_run(result, tmp_path / "run", 7, 3, 5)


def test_hparams_and_accounting_table_in_tensorboard(trained_workdir):
  values, metric_tags = hparams(trained_workdir)
  assert values["optim.lr"] == 3e-3 and values["model.name"] == "decoder" and values["metrics.wandb"] is False
  assert "sharding.rules" not in values  # lists are not hparams
  assert metric_tags == ["train/loss", "eval/loss"]
  table = text(trained_workdir, "accounting").splitlines()
  assert table[:2] == ["| count | value |", "|:--|--:|"] and table[2].startswith("| params_total | ")
