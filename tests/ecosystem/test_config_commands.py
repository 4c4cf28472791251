"""Every config has a `tiny` variant, and every `scripts/train` command in the configs' docstrings works with
train.steps=2: validated here (fast); run for real, GPU-scale variants compile-checked only, under `-m slow`."""
import json
import subprocess

import pytest

from config_commands import CONFIGS, NO_TINY, docstring_commands, localize, needs_other_commands
from tessera_testing import ROOT
from tessera.trainer import cli, config_loader

COMMANDS = docstring_commands()


def test_docstrings_have_train_commands():
  assert {stem for stem, _, _ in COMMANDS} >= {"lm", "stem", "quickstart", "trimkv", "zett", "ehr_jepa", "gg"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_has_a_tiny_variant(path):
  if path.stem in NO_TINY:
    pytest.skip(NO_TINY[path.stem])
  config, _ = cli.load_config(f"configs/{path.name}:tiny", {"train.steps": 2})
  assert config.train.steps == 2 and config.model.d_model <= 128


@pytest.mark.parametrize("stem, line, argv", COMMANDS, ids=[f"{s}:{n}" for s, n, _ in COMMANDS])
def test_docstring_command_validates_at_two_steps(stem, line, argv, tmp_path):
  if needs_other_commands(argv):
    pytest.skip("its config is a run that scripts/transfer_tokenizer writes (tests/zett run that chain)")
  runs, _ = cli.plan_train(localize(argv, tmp_path))
  assert runs and all(config.train.steps == 2 for config, _ in runs)


def _gpu_scale(argv):
  args, rest = cli.parser("train").parse_known_args(argv)
  config, _ = cli.load_config(args.config, cli.split_overrides(rest), check_methods=False)
  return config.model.dtype == "bfloat16"


@pytest.mark.slow
@pytest.mark.parametrize("stem", sorted({s for s, _, _ in COMMANDS}))
def test_docstring_commands_run_at_two_steps(stem, tmp_path):
  """In docstring order (a gate run's init.workdir is the base run before it); GPU-scale: compile_check only."""
  meds = None
  if any("data/meds" in " ".join(a) for s, _, a in COMMANDS if s == stem):
    from tessera.data import meds_synth, prepare_meds
    meds_synth.write_dataset(tmp_path / "meds_src", 200, seed=0)
    prepare_meds.prepare(["--input", str(tmp_path / "meds_src"), "--out", str(tmp_path / "meds")])
    meds = tmp_path / "meds"
  for s, line, argv in COMMANDS:
    if s != stem or needs_other_commands(argv):
      continue
    argv = localize(argv, tmp_path / "runs", meds)
    if _gpu_scale(argv):
      config = argv[argv.index("--config") + 1]
      command = ["scripts/compile_check", "--config", config, "--devices", "1", "--hbm-gb", "1000"]
    else:
      command = ["scripts/train", *argv]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{stem} docstring line {line}: {' '.join(command)}\n{result.stderr[-3000:]}"
    if command[0] == "scripts/compile_check":
      assert json.loads(result.stdout.strip().splitlines()[-1])["fits"]


def test_lowercase_false_override_reaches_the_config(tmp_path):
  runs, _ = cli.plan_train(["--config", "configs/lm.py:tiny", "--workdir", str(tmp_path),
                            "--config.model.tie_embeddings=false"])
  assert runs[0][0].model.tie_embeddings is False and config_loader.parse_value("true") is True
