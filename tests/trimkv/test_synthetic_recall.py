"""data/synthetic_recall.py: the §9 recall/copy mixture with corpus text (issue 12), seeded and random-access."""
import ml_collections
import numpy as np
import pytest

from tessera.data import registry
from tessera.data import synthetic_recall as sr


def pipeline(seq_len=128, seed=0, **recall):
  cfg = ml_collections.ConfigDict(dict(name="synthetic_recall", path="", workers=0, prefetch=0,
                                       recall={**sr.DEFAULTS, **recall}))
  return registry.get("synthetic_recall")(cfg, seq_len=seq_len, global_batch_size=8, seed=seed)


@pytest.fixture(scope="module")
def data():
  return pipeline()


def test_tokenizer_is_bytes_plus_task_symbols(data):
  tok = data.tokenizer
  assert tok.vocab_size == 512 and tok.eos_id == 256
  ids = tok.encode("é<q><k3>x<v154></span>")
  assert ids.tolist() == [0xC3, 0xA9, 257, 264, ord("x"), 511, 260]
  assert tok.decode(ids) == "é<q><k3>x<v154></span>" and tok.decode([65, 256, 66]) == "AB"


def test_rows_are_seeded_and_random_access(data):
  first = next(data.train_batches(3, slice(None)))
  again = next(data.train_batches(3, slice(None)))
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  assert first["inputs"].shape == (8, 128)
  other = next(pipeline(seed=1).train_batches(3, slice(None)))
  assert not np.array_equal(first["inputs"], other["inputs"])
  tasks = [data.example("train", i).task for i in range(600)]
  assert abs(tasks.count("text") / 600 - 1 / 3) < 0.06 and abs(tasks.count("recall") - tasks.count("copy")) < 80


def test_recall_rows_answer_each_query_with_its_stored_value(data):
  fields, answers, needed = data.examples("recall", 16)
  tok = data.tokenizer
  for row in range(16):
    inputs, targets = fields["inputs"][row], fields["targets"][row]
    pairs = {int(inputs[t]): int(inputs[t + 1]) for t in np.flatnonzero(needed[row])[::2]}
    assert len(pairs) == sr.DEFAULTS["pairs"] and needed[row].sum() == 2 * sr.DEFAULTS["pairs"]
    for t in np.flatnonzero(answers[row]):
      assert inputs[t - 1] == tok.id("q") and targets[t] == pairs[int(inputs[t])]
    assert answers[row].sum() == sr.DEFAULTS["queries"] and (fields["segment_ids"][row] == 1).all()


def test_copy_rows_repeat_the_marked_span(data):
  fields, answers, needed = data.examples("copy", 8)
  for row in range(8):
    span = fields["inputs"][row][needed[row]]
    assert len(span) == sr.DEFAULTS["span"] and (span > 256).all()
    np.testing.assert_array_equal(fields["targets"][row][answers[row]], span)


def test_eval_text_is_held_out(data):
  text = data.examples("text", 4)[0]["inputs"]
  train_rows = {row[:-1].tobytes() for row in data._text["train"]}
  assert not any(row.tobytes() in train_rows for row in text)


@pytest.mark.parametrize("key, value", [("pairs", 0), ("queries", 9), ("text_fraction", 1.5)])
def test_bad_options_name_their_key(key, value):
  with pytest.raises(ValueError, match=f"^config key 'data.recall.{key}'"):
    pipeline(**{key: value})


def test_short_rows_are_refused():
  with pytest.raises(ValueError, match="train.seq_len"):
    pipeline(seq_len=32)


def test_filler_loss_off_trains_task_rows_on_their_answers_only():
  data = pipeline(filler_loss=False)
  batch = next(data.train_batches(0, slice(None)))
  for row in range(8):
    e = data.example("train", row)
    if e.task == "text":
      assert batch["loss_mask"][row].sum() >= 120
    else:
      np.testing.assert_array_equal(batch["loss_mask"][row], e.answer_mask.astype(np.float32))


def test_answer_weight_scales_the_answers_loss_weight():
  data = pipeline(filler_loss=False, answer_weight=8.0)
  batch = next(data.train_batches(0, slice(None)))
  for row in range(8):
    e = data.example("train", row)
    if e.task != "text":
      np.testing.assert_array_equal(batch["loss_mask"][row], 8.0 * e.answer_mask)
