"""The embedded pipeline: tokenizer, stream packing, and the global-order contract (determinism, resume, slicing)."""

import itertools

import ml_collections
import numpy as np
import pytest

from tessera.data import byte_tokenizer
from tessera.data import embedded
from tessera.data import embedded_corpus
from tessera.data import packing
from tessera.data import registry

EOS = byte_tokenizer.EOS_ID
SEQ_LEN, BATCH = 64, 8


def _config(workers=0, prefetch=2):
  return ml_collections.ConfigDict(dict(name="embedded", path="", workers=workers, prefetch=prefetch))


@pytest.fixture(scope="module")
def pipeline():
  return registry.get("embedded")(_config(), seq_len=SEQ_LEN, global_batch_size=BATCH, seed=0)


@pytest.fixture(scope="module")
def long_row_pipeline():
  """~1.1k rows of 4k tokens: a whole epoch is ~17 batches of 64, and the validation split is < one batch."""
  return embedded.EmbeddedPipeline(seq_len=4096, global_batch_size=64, seed=3, prefetch=0)


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _rows(batch):
  """The packed rows a batch was cut from: inputs plus the last target."""
  return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)


def _assert_batches_equal(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_byte_tokenizer_round_trip():
  tokenizer = byte_tokenizer.ByteTokenizer()
  text = "héllo ∑ 🙂\n\tdef f(): pass"
  ids = tokenizer.encode(text)
  assert ids.dtype == np.int32 and len(ids) == len(text.encode("utf-8"))
  assert tokenizer.vocab_size == 257 and ids.max() < 256
  assert tokenizer.decode(ids) == text
  assert tokenizer.decode(np.concatenate([ids, [EOS]])) == text
  assert tokenizer.decode(tokenizer.encode("🙂")[:2]) == "\ufffd"


def test_stream_packing_cuts_rows_and_marks_documents():
  docs = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6, 7, 8])]
  rows = packing.pack_stream(docs, seq_len=4, eos_id=EOS)
  np.testing.assert_array_equal(rows, [[1, 2, 3, EOS, 4], [EOS, 5, 6, 7, 8]])  # the tail [EOS] is dropped
  fields = packing.batch_fields(rows, EOS)
  np.testing.assert_array_equal(fields["inputs"], [[1, 2, 3, EOS], [EOS, 5, 6, 7]])
  np.testing.assert_array_equal(fields["targets"], [[2, 3, EOS, 4], [5, 6, 7, 8]])
  np.testing.assert_array_equal(fields["segment_ids"], [[1, 1, 1, 1], [1, 2, 2, 2]])
  np.testing.assert_array_equal(fields["positions"], [[0, 1, 2, 3], [0, 0, 1, 2]])
  np.testing.assert_array_equal(fields["loss_mask"], [[1, 1, 1, 0], [0, 1, 1, 1]])
  assert fields["loss_mask"].dtype == np.float32


def test_stream_shorter_than_a_row_repeats():
  rows = packing.pack_stream([np.array([1, 2])], seq_len=6, eos_id=EOS)
  np.testing.assert_array_equal(rows, [[1, 2, EOS, 1, 2, EOS, 1]])


def test_packing_invariants_on_corpus_batches(pipeline):
  batch = next(pipeline.train_batches(0, slice(None)))
  for key in ("inputs", "targets", "segment_ids", "positions"):
    assert batch[key].shape == (BATCH, SEQ_LEN) and batch[key].dtype == np.int32, key
  assert batch["loss_mask"].shape == (BATCH, SEQ_LEN) and batch["loss_mask"].dtype == np.float32
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  # Loss is off exactly where the input closes a document (its target opens the next one).
  np.testing.assert_array_equal(batch["loss_mask"], (batch["inputs"] != EOS).astype(np.float32))
  new_segment = np.diff(batch["segment_ids"], axis=1) != 0
  np.testing.assert_array_equal(new_segment, batch["inputs"][:, :-1] == EOS)
  np.testing.assert_array_equal(batch["positions"][:, 1:] == 0, new_segment)
  assert (batch["positions"][:, 0] == 0).all() and (batch["segment_ids"][:, 0] == 1).all()
  steps = np.diff(batch["positions"], axis=1)
  assert (steps[~new_segment] == 1).all()


def test_same_seed_same_batches_other_seed_differs(pipeline):
  again = embedded.EmbeddedPipeline(seq_len=SEQ_LEN, global_batch_size=BATCH, seed=0, prefetch=0)
  other = embedded.EmbeddedPipeline(seq_len=SEQ_LEN, global_batch_size=BATCH, seed=1, prefetch=0)
  batches = _take(pipeline.train_batches(0, slice(None)), 3)
  _assert_batches_equal(batches, _take(again.train_batches(0, slice(None)), 3))
  assert not np.array_equal(batches[0]["inputs"], next(other.train_batches(0, slice(None)))["inputs"])


def test_resume_from_batch_index_continues_the_same_stream(pipeline):
  uninterrupted = _take(pipeline.train_batches(0, slice(None)), 7)
  _assert_batches_equal(uninterrupted[4:], _take(pipeline.train_batches(4, slice(None)), 3))


def test_process_row_slices_tile_the_global_batch(pipeline):
  full = _take(pipeline.train_batches(5, slice(None)), 3)
  first = _take(pipeline.train_batches(5, slice(0, BATCH // 2)), 3)
  second = _take(pipeline.train_batches(5, slice(BATCH // 2, BATCH)), 3)
  joined = [{key: np.concatenate([a[key], b[key]]) for key in a} for a, b in zip(first, second)]
  _assert_batches_equal(full, joined)


def test_each_epoch_covers_every_train_row_once_in_a_new_order(long_row_pipeline):
  p = long_row_pipeline
  train_docs, _ = embedded_corpus.split(embedded_corpus.documents())
  expected = packing.pack_stream([p.tokenizer.encode(d.text) for d in train_docs], p.seq_len, EOS)
  assert p.rows_per_epoch == len(expected)
  num_batches = -(-2 * p.rows_per_epoch // p.global_batch_size)
  stream = np.concatenate([_rows(b) for b in _take(p.train_batches(0, slice(None)), num_batches)])
  epoch_0, epoch_1 = stream[:p.rows_per_epoch], stream[p.rows_per_epoch:2 * p.rows_per_epoch]
  for epoch in (epoch_0, epoch_1):
    assert sorted(map(bytes, epoch)) == sorted(map(bytes, expected))
  assert not np.array_equal(epoch_0, epoch_1)


def test_eval_batches_are_deterministic_validation_only_and_wrap(long_row_pipeline):
  p = long_row_pipeline
  batches = p.eval_batches(2, slice(None))
  _assert_batches_equal(batches, p.eval_batches(2, slice(None)))
  assert p.num_val_rows < p.global_batch_size  # so the first batch already wraps around
  rows = _rows(batches[0])
  np.testing.assert_array_equal(rows[p.num_val_rows], rows[0])
  train_docs, val_docs = embedded_corpus.split(embedded_corpus.documents())
  assert not {d.name for d in train_docs} & {d.name for d in val_docs}

  def stream_bytes(docs):
    return np.concatenate([np.append(p.tokenizer.encode(d.text), EOS) for d in docs]).astype(np.int32).tobytes()

  val_bytes, train_bytes = stream_bytes(val_docs), stream_bytes(train_docs)
  for row in rows[:p.num_val_rows]:
    assert row.tobytes() in val_bytes and row.tobytes() not in train_bytes


def test_corpus_is_deterministic_and_mostly_train():
  docs = embedded_corpus.documents()
  assert [d.name for d in docs] == [d.name for d in embedded_corpus.documents()]
  train, val = embedded_corpus.split(docs)
  assert len(docs) > 200 and 1 <= len(val) <= 0.05 * len(docs)
  assert 3e6 < sum(len(d.text.encode("utf-8")) for d in docs) < 7e6


def test_unigram_entropy_is_that_of_bytes(pipeline):
  entropy_bits = pipeline.unigram_entropy_nats() / np.log(2)
  assert 3.0 < entropy_bits < 6.0


def test_two_workers_give_the_same_batches(pipeline):
  """~8 s here, nearly all of it starting the two worker processes."""
  with_workers = embedded.EmbeddedPipeline(seq_len=SEQ_LEN, global_batch_size=BATCH, seed=0, workers=2)
  iterator = with_workers.train_batches(2, slice(1, 7))
  batches = _take(iterator, 5)
  iterator.close()
  _assert_batches_equal(_take(pipeline.train_batches(2, slice(1, 7)), 5), batches)
