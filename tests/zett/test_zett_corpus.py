"""The §8 corpus split and the automatic, cached BPE preparation behind configs/zett.py:base."""
import time

from tessera.configs import zett as zett_config
from tessera.data import zett_corpus
from tessera.trainer import cli


def test_split_is_by_file_about_ten_percent_and_has_prose_and_code():
  train, held = zett_corpus.split()
  assert not {d.name for d in train} & {d.name for d in held}
  assert 0.05 < len(held) / (len(train) + len(held)) < 0.15
  assert any(zett_corpus.is_prose(d) for d in held) and any(not zett_corpus.is_prose(d) for d in held)
  assert [d.name for d in zett_corpus.split()[1]] == [d.name for d in held]


def test_bpe_is_prepared_once_then_reused(tmp_path):
  first = zett_corpus.cached_bpe(300, str(tmp_path), max_docs=6)
  began = time.perf_counter()
  again = zett_corpus.cached_bpe(300, str(tmp_path), max_docs=6)
  assert again == first and time.perf_counter() - began < 1.0
  assert (first / "tokenizer.json").is_file() and (first / "stats.json").is_file()
  assert len(list((tmp_path / "zett_bpe").iterdir())) == 1  # no staging leftovers
  other = zett_corpus.cached_bpe(320, str(tmp_path), max_docs=6)
  assert other != first


def test_every_variant_validates_with_two_steps():
  from tessera.trainer import validate, zoo
  for variant in ("base", "tiny_base", "small", "tiny"):
    config, _ = cli.load_config(f"configs/zett.py:{variant}", {"train.steps": 2})
    validate.validate(config)
    zoo.check(config)
    assert config.optim.warmup_steps <= 2
    if "zett" in config.data:
      assert config.data.zett.identity_steps <= 2 and config.data.zett.n_slots == config.model.zett.n_slots
  assert zett_config.build("small").model.zett.n_slots == 2048 + 128
