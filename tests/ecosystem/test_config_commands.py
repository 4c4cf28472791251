"""Every config has a `tiny` variant, and every command in the configs' docstrings works: the `scripts/train` ones
with train.steps=2 validated here (fast); all of them (prepare_meds, probe, edit_knowledge, transfer_tokenizer
too) run for real in docstring order under `-m slow`, GPU-scale train variants compile-checked only."""
import json
import pathlib
import subprocess

import pytest

from config_commands import (CONFIGS, CONTINUES, NO_TINY, PLACEHOLDERS, docstring_commands, localize,
                             needs_other_commands, train_commands)
from tessera_testing import ROOT
from tessera.trainer import cli, config_loader
from tessera.trainer import workdir as workdir_lib

COMMANDS = train_commands()
ALL_COMMANDS = docstring_commands()


def test_docstrings_have_train_commands():
  assert {stem for stem, _, _ in COMMANDS} >= {"lm", "stem", "quickstart", "trimkv", "zett", "ehr_jepa", "gg"}
  others = {script for _, _, script, _ in ALL_COMMANDS} - {"train"}
  assert others >= {"prepare_meds", "probe", "edit_knowledge", "transfer_tokenizer"}
  assert all((ROOT / "scripts" / script).is_file() for _, _, script, _ in ALL_COMMANDS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_has_a_tiny_variant(path):
  if path.stem in NO_TINY:
    pytest.skip(NO_TINY[path.stem])
  config, _ = cli.load_config(f"configs/{path.name}:tiny", {"train.steps": 2})
  assert config.train.steps == 2 and config.model.d_model <= 128


@pytest.mark.parametrize("stem, line, argv", COMMANDS, ids=[f"{s}:{n}" for s, n, _ in COMMANDS])
def test_docstring_command_validates_at_two_steps(stem, line, argv, tmp_path):
  if needs_other_commands(argv):
    pytest.skip("its config is a run that scripts/transfer_tokenizer writes (the slow test runs that chain)")
  for s, _, earlier in COMMANDS[:COMMANDS.index((stem, line, argv))]:  # init.workdir runs: their config.json, as
    if s == stem and any(w.startswith("--config.init.workdir=") for w in argv):  # the trainer writes it at start
      earlier_runs, _ = cli.plan_train(localize("train", earlier, tmp_path))
      for config, workdir in earlier_runs:
        workdir_lib.write_json(pathlib.Path(workdir) / "config.json", config_loader.to_dict(config))
  runs, _ = cli.plan_train(localize("train", argv, tmp_path))
  assert runs and all(config.train.steps == 2 for config, _ in runs)


def _gpu_scale(argv):
  args, rest = cli.parser("train").parse_known_args(argv)
  config, _ = cli.load_config(args.config, cli.split_overrides(rest), check_methods=False)
  return config.model.dtype == "bfloat16"


def make_placeholders(tmp, commands):
  """A MEDS source directory (the synthetic generator) and a target tokenizer (a small BPE on embedded code)."""
  words = {w for _, _, _, argv in commands for w in argv}
  out = {}
  if "MEDS_DIR" in words:
    from tessera.data import meds_synth
    out["MEDS_DIR"] = meds_synth.write_dataset(tmp / "meds_src", 200, seed=0)
  if "NEW.json" in words:
    from tessera.data import text_tokenizer, zett_corpus
    code = [d.text for d in zett_corpus.train_docs() if not zett_corpus.is_prose(d)][:5]
    out["NEW.json"] = tmp / "new_tokenizer.json"
    text_tokenizer.train("bpe", code, 400).save(str(out["NEW.json"]))
  return out


@pytest.mark.slow
@pytest.mark.parametrize("stem", sorted({s for s, _, _, _ in ALL_COMMANDS} - set(CONTINUES.values())))
def test_docstring_commands_run(stem, tmp_path):
  """Every command of the docstring in order (a gate run's init.workdir is the base run before it; a config that
  continues another's chain runs that one first, so that one is not run alone); GPU-scale train variants:
  compile_check only."""
  chain = [c for s in (CONTINUES.get(stem), stem) for c in ALL_COMMANDS if s and c[0] == s]
  placeholders = make_placeholders(tmp_path, chain)
  assert set(placeholders) == {w for _, _, _, argv in chain for w in argv if w in PLACEHOLDERS}
  for s, line, script, argv in chain:
    argv = localize(script, argv, tmp_path, placeholders)
    if script == "train" and _gpu_scale(argv):
      config = argv[argv.index("--config") + 1]
      command = ["scripts/compile_check", "--config", config, "--devices", "1", "--hbm-gb", "1000"]
    else:
      command = [f"scripts/{script}", *argv]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{s} docstring line {line}: {' '.join(command)}\n{result.stderr[-3000:]}"
    if command[0] == "scripts/compile_check":
      assert json.loads(result.stdout.strip().splitlines()[-1])["fits"]


def test_lowercase_false_override_reaches_the_config(tmp_path):
  runs, _ = cli.plan_train(["--config", "configs/lm.py:tiny", "--workdir", str(tmp_path),
                            "--config.model.tie_embeddings=false"])
  assert runs[0][0].model.tie_embeddings is False and config_loader.parse_value("true") is True
