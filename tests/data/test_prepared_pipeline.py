"""First-fit packing and the prepared pipeline's global-order contract: no token lost, no segment crossed,
disjoint and complete per-process rows, resume by batch index, the same batches with 0 and 2 workers."""

import itertools

import ml_collections
import numpy as np
import pytest

from tessera.data import first_fit
from tessera.data import prepare_text
from tessera.data import prepared
from tessera.data import registry
from tessera.trainer import loop
from tessera.trainer.config_loader import ConfigError
from tessera.configs import quickstart

SEQ_LEN, BATCH = 32, 8


def test_first_fit_plan_on_a_hand_example():
  plan = first_fit.first_fit(np.array([3, 5, 2, 9, 1, 4]), capacity=5)
  rows = [list(zip(plan.piece_record[plan.pieces(r)].tolist(), plan.piece_start[plan.pieces(r)].tolist(),
                   plan.piece_length[plan.pieces(r)].tolist())) for r in range(plan.num_rows)]
  # tails first-fit: 3 -> row0, 2 -> row0, 4 (of 9) -> row1, 1 -> row1, 4 -> row2; full chunks get their own rows
  assert rows == [[(0, 0, 3), (2, 0, 2)], [(3, 5, 4), (4, 0, 1)], [(5, 0, 4)], [(1, 0, 5)], [(3, 0, 5)]]


def test_first_fit_covers_every_token_once_within_capacity():
  lengths = np.random.default_rng(0).integers(1, 90, 500)
  plan = first_fit.first_fit(lengths, capacity=33, order=np.random.default_rng(1).permutation(500))
  covered = [np.zeros(n, int) for n in lengths]
  for record, start, length in zip(plan.piece_record, plan.piece_start, plan.piece_length):
    covered[record][start:start + length] += 1
  assert all((c == 1).all() for c in covered)
  row_fill = np.add.reduceat(plan.piece_length, plan.row_starts[:-1])
  assert row_fill.max() <= 33 and plan.num_rows < 1.1 * lengths.sum() / 33 + 1


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("text")
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "eps", "zeta\n", "eta", "theta"]
  for i in range(60):
    (tmp / f"{i:02d}.txt").write_text(" ".join(rng.choice(words, rng.integers(1, 40))))
  prepare_text.prepare(["--input", str(tmp), "--out", str(tmp / "out"), "--tokenizer", "bytes"])
  return tmp / "out"


def _config(path, workers=0):
  return ml_collections.ConfigDict(dict(name="embedded", path=str(path), workers=workers, prefetch=2))


@pytest.fixture(scope="module")
def pipeline(data_dir):
  cfg = _config(data_dir)
  return registry.get(registry.name_for(cfg))(cfg, seq_len=SEQ_LEN, global_batch_size=BATCH, seed=0)


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _assert_batches_equal(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_keep_segments_apart(pipeline):
  batch = next(pipeline.train_batches(0, slice(None)))
  for key in ("inputs", "targets", "segment_ids", "positions"):
    assert batch[key].shape == (BATCH, SEQ_LEN) and batch[key].dtype == np.int32
  seg, pos, mask = batch["segment_ids"], batch["positions"], batch["loss_mask"]
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  assert mask.dtype == np.float32 and (mask[seg == 0] == 0).all()
  new_segment = np.diff(seg, axis=1) != 0
  np.testing.assert_array_equal(pos[:, 1:][new_segment], 0)
  assert (np.diff(pos, axis=1)[~new_segment & (seg[:, 1:] > 0)] == 1).all()
  # a loss term never predicts across a document boundary: the target closing a segment is <eos>
  eos = pipeline.tokenizer.eos_id
  ends = (mask[:, :-1] == 1) & (mask[:, 1:] == 0) & (seg[:, 1:] > 0)
  assert (batch["targets"][:, :-1][ends] == eos).all()


def test_one_epoch_holds_every_token_once_in_shuffled_order(pipeline, data_dir):
  rows = pipeline.rows_per_epoch
  num_batches = -(-2 * rows // BATCH)
  stream = [np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1) for b in
            _take(pipeline.train_batches(0, slice(None)), num_batches)]
  stream = np.concatenate(stream)
  expected = sorted(bytes(pipeline._train_rows[r][0]) for r in range(rows))
  assert sorted(map(bytes, stream[:rows])) == expected and sorted(map(bytes, stream[rows:2 * rows])) == expected
  assert not np.array_equal(stream[:rows], stream[rows:2 * rows])
  tokens = np.concatenate([pipeline._train_rows[r][0][pipeline._train_rows[r][1] > 0] for r in range(rows)])
  assert len(tokens) == pipeline.stats["splits"]["train"]["tokens"]


def test_process_slices_are_disjoint_and_tile_the_batch(pipeline):
  full = _take(pipeline.train_batches(3, slice(None)), 4)
  parts = [_take(pipeline.train_batches(3, slice(lo, lo + 2)), 4) for lo in range(0, BATCH, 2)]
  joined = [{k: np.concatenate([p[i][k] for p in parts]) for k in full[0]} for i in range(4)]
  _assert_batches_equal(full, joined)


def test_resume_and_workers_give_the_same_batches(pipeline, data_dir):
  uninterrupted = _take(pipeline.train_batches(0, slice(None)), 6)
  _assert_batches_equal(uninterrupted[2:], _take(pipeline.train_batches(2, slice(None)), 4))
  with_workers = prepared.build(_config(data_dir, workers=2), seq_len=SEQ_LEN, global_batch_size=BATCH, seed=0)
  iterator = with_workers.train_batches(2, slice(None))
  batches = _take(iterator, 4)
  iterator.close()
  _assert_batches_equal(uninterrupted[2:], batches)


def test_eval_batches_are_deterministic(pipeline):
  a, b = pipeline.eval_batches(2, slice(None)), pipeline.eval_batches(2, slice(None))
  _assert_batches_equal(a, b)
  assert 0 < pipeline.unigram_entropy_nats() < np.log(pipeline.vocab_size)


def test_trainer_takes_vocab_from_the_prepared_directory(data_dir, tmp_path):
  c = quickstart.get_config()
  with c.unlocked():
    c.data.path = str(data_dir)
    c.train.seq_len = SEQ_LEN
  data = loop.build_pipeline(c)
  loop.resolve_vocab_size(c, data.vocab_size)
  assert c.model.vocab_size == 384  # 256 bytes + <eos>, <pad>, <bos>, <unk> -> padded to a multiple of 128
  with c.unlocked():
    c.model.vocab_size = 128
  with pytest.raises(ConfigError, match="disagrees with the tokenizer.s vocabulary"):
    loop.resolve_vocab_size(c, data.vocab_size)
  with c.unlocked():
    c.model.vocab_size = 32768  # a multiple of 128, but 32,508 rows no token reaches
  with pytest.raises(ConfigError, match="config key 'model.vocab_size': 32768 is 32508 rows above"):
    loop.resolve_vocab_size(c, data.vocab_size)
  loop.resolve_vocab_size(c, data.vocab_size, inherited=True)  # a resumed or imported run keeps its size
  with c.unlocked():
    c.data.path = str(tmp_path / "missing")
  with pytest.raises(ConfigError, match="has no stats.json"):
    loop.build_pipeline(c)


def test_token_ids_outside_the_vocabulary_are_a_one_line_error_naming_shard_and_record(data_dir, tmp_path, capsys):
  """Checked on the host before anything clips an id: through the pipeline and through `scripts/train` (exit 2)."""
  import json
  import shutil
  from tessera.data import array_record_io
  from tessera.trainer import cli
  bad = tmp_path / "bad"
  shutil.copytree(data_dir, bad)
  stats = json.loads((bad / "stats.json").read_text())
  shards = stats["splits"][stats["train_split"]]["shards"]
  source = array_record_io.open_source(bad, shards)
  records = [array_record_io.decode_tokens(source[i], False).copy() for i in range(len(source))]
  for tokens in records:
    tokens[0] = 5000  # every train record: the first batch meets one, whatever the order
  sizes = [len(array_record_io.open_source(bad, [name])) for name in shards]
  for name in shards:
    (bad / name).unlink()
  array_record_io.write_shards(bad, shards[0].split("-00000-of-")[0], map(array_record_io.encode_record, records),
                               len(records), sizes[0])
  cfg = _config(bad)
  pipe = registry.get(registry.name_for(cfg))(cfg, seq_len=SEQ_LEN, global_batch_size=BATCH, seed=0)
  with pytest.raises(ValueError, match=r"array_record: record \d+ holds token id 5000 at position 0, outside the "
                                       r"vocabulary \[0, 260\)"):
    next(pipe.train_batches(0, slice(None)))
  code = cli.main(["train", "--config", "configs/lm.py:tiny", "--workdir", str(tmp_path / "run"),
                   f"--config.data.path={bad}", "--config.train.steps=1", f"--config.train.seq_len={SEQ_LEN}"])
  last = capsys.readouterr().err.strip().splitlines()[-1]  # after the run's start-up lines
  assert code == 2 and last.startswith(f"error: {bad / shards[0].split('-')[0]}") and "token id 5000" in last, last
