"""model.attention_impl=cudnn is refused before anything is written: training batches carry segment ids, which
cuDNN attention cannot mask (issue 17). `auto` stays valid (cuDNN only where a call is plain attention)."""

from tessera.trainer import cli

from tessera_testing import TINY, run_cli


def test_cudnn_is_refused_with_one_line_and_exit_2(tmp_path):
  workdir = tmp_path / "run"
  result = run_cli(*TINY, "--workdir", workdir, "--config.model.attention_impl=cudnn", check=False)
  assert result.returncode == 2
  line = result.stderr.strip()
  assert "\n" not in line and line.startswith("error: config key 'model.attention_impl': 'cudnn' cannot mask")
  assert not workdir.exists()


def test_auto_and_pallas_validate():
  for impl in ("auto", "pallas"):
    config, _ = cli.load_config(TINY[1], {"model.attention_impl": impl})
    assert config.model.attention_impl == impl
