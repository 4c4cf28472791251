"""jepa_ehr.md acceptance check 3 (cut-point sampler: window times, prefix kept, determinism, resume), the probe
half of check 4 (a node's window holds no event after the node), and the probe metrics (§7) against brute force."""
import itertools

import numpy as np
import pytest

from tessera.data import array_record_io
from tessera.data import ehr_cuts
from tessera.data import meds_synth
from tessera.data import prepare_meds
from tessera.losses import linear_probe

CTX, FUT, HORIZON_DAYS = 40, 16, 90.0


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("ehr")
  meds = meds_synth.write_dataset(root / "meds", num_subjects=60, seed=5)
  prepare_meds.prepare(["--input", str(meds), "--out", str(root / "prepared")])
  return root / "prepared"


def pipeline(prepared, seed=0):
  return ehr_cuts.CutPointPipeline(prepared, ctx_len=CTX, fut_len=FUT, horizon_days=HORIZON_DAYS, min_ctx_events=16,
                                   global_batch_size=4, seed=seed, prefetch=0)


def drawn(p, index):
  """The subject, cut k, tokens and times the train sampler used for row `index`."""
  rng = np.random.default_rng([p.seed, 0, index])
  subject = p.train[int(rng.integers(len(p.train)))]
  k = int(rng.integers(len(subject.cut_times)))
  record = p.source("train")[subject.index]
  return subject, k, array_record_io.decode_tokens(record, True), array_record_io.decode_times(record)


def test_windows_respect_the_cut_and_horizon_and_keep_the_prefix(prepared):
  p = pipeline(prepared)
  rows = p.rows("train")
  truncated = 0
  for index in range(40):
    tokens, cut_idx, last_idx = rows(index)
    subject, k, all_tokens, times = drawn(p, index)
    t_c, ctx_end, fut_end = subject.cut_times[k], subject.ctx_end[k], subject.fut_end[k]
    assert subject.ctx_end[k] - subject.prefix >= 16 and fut_end > ctx_end
    np.testing.assert_array_equal(tokens[:subject.prefix], all_tokens[:subject.prefix])  # <bos>, static, age
    n_ctx = cut_idx + 1
    body = all_tokens[ctx_end - (n_ctx - subject.prefix):ctx_end]
    np.testing.assert_array_equal(tokens[subject.prefix:n_ctx], body)  # the latest context, left-truncated
    assert np.all(times[ctx_end - (n_ctx - subject.prefix):ctx_end] <= t_c) and times[ctx_end - 1] == t_c
    n_fut = last_idx - cut_idx
    assert 1 <= n_fut <= FUT
    np.testing.assert_array_equal(tokens[n_ctx:last_idx + 1], all_tokens[ctx_end:ctx_end + n_fut])
    future_times = times[ctx_end:ctx_end + n_fut]
    assert np.all(future_times > t_c) and np.all(future_times <= t_c + HORIZON_DAYS * ehr_cuts.DAY_US)
    assert np.all(tokens[last_idx + 1:] == p.pad_id)
    fields = ehr_cuts.row_fields([(tokens, cut_idx, last_idx)], p.pad_id, FUT)
    np.testing.assert_array_equal(fields["fut_inputs"][0, :n_fut + 1],
                                  np.r_[tokens[0], tokens[cut_idx + 1:last_idx + 1]])
    assert fields["fut_last"][0] == n_fut and fields["fut_inputs"].shape == (1, FUT + 1)
    truncated += ctx_end - subject.prefix > CTX - subject.prefix
  assert truncated > 0  # the prefix-keeping truncation was exercised


def test_same_seed_same_batches_and_resume_continues_the_stream(prepared):
  local = slice(0, 4)
  first = list(itertools.islice(pipeline(prepared).train_batches(0, local), 5))
  again = list(itertools.islice(pipeline(prepared).train_batches(0, local), 5))
  resumed = list(itertools.islice(pipeline(prepared).train_batches(3, local), 2))
  other = next(pipeline(prepared, seed=1).train_batches(0, local))
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(first[3:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(first[0]["inputs"], other["inputs"])
  half = next(pipeline(prepared).train_batches(0, slice(2, 4)))  # a second process's rows of the same batch
  np.testing.assert_array_equal(half["inputs"], first[0]["inputs"][2:])


def test_node_window_holds_only_events_up_to_the_node(prepared):
  windows = ehr_cuts.NodeWindows(prepared, CTX)
  source = array_record_io.open_source(prepared, windows.stats["splits"]["train"]["shards"])
  subject_id = next(s for s, (split, _) in windows.record_of.items() if split == "train")
  record = source[windows.record_of[subject_id][1]]
  tokens, times = array_record_io.decode_tokens(record, True), array_record_io.decode_times(record)
  prefix = ehr_cuts.prefix_length(tokens, windows.tokenizer)
  node = int(np.unique(times[prefix:])[10])
  row, last, context = windows.window(subject_id, node)
  upto = int(np.searchsorted(times[prefix:-1], node, side="right")) + prefix
  np.testing.assert_array_equal(context, tokens[:upto])
  assert np.all(times[prefix:upto] <= node) and times[upto] > node
  n_body = last + 1 - prefix
  np.testing.assert_array_equal(row[prefix:last + 1], tokens[upto - n_body:upto])
  assert np.all(row[last + 1:] == windows.pad_id)


def brute_auroc(y, s):
  pos, neg = s[y], s[~y]
  return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


def test_auroc_auprc_and_bootstrap():
  rng = np.random.default_rng(0)
  y = rng.random(80) < 0.3
  s = np.round(y + rng.normal(0, 1, 80), 1)  # ties on purpose
  assert linear_probe.auroc(y, s) == pytest.approx(brute_auroc(y, s), abs=1e-12)
  w = rng.integers(0, 3, 80)
  expanded = np.repeat(np.arange(80), w)
  assert linear_probe.auroc(y, s, w) == pytest.approx(brute_auroc(y[expanded], s[expanded]), abs=1e-12)
  assert linear_probe.auprc(np.array([1, 0, 1, 0], bool), np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx(
      (1 + 2 / 3) / 2)
  assert np.isnan(linear_probe.auroc(np.ones(5, bool), np.arange(5.0)))
  groups = np.arange(80) // 2
  lo, hi = linear_probe.bootstrap_ci(y, s, groups, resamples=200)
  assert lo <= linear_probe.auroc(y, s) <= hi and 0 < lo < hi < 1
  folds = linear_probe.grouped_folds(y, groups, 5)
  assert all(len(set(folds[groups == g])) == 1 for g in np.unique(groups))
  assert all(y[folds == k].sum() >= 2 for k in range(5))


def test_logistic_probe_learns_and_c_regularises():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(200, 5)).astype(np.float32)
  y = (x[:, 0] - 0.5 * x[:, 1] + 0.3 * rng.normal(size=200)) > 0
  theta = linear_probe.fit_logistic(x, y, (1e-3, 10.0), iterations=100)
  assert linear_probe.auroc(y, linear_probe.scores(theta[1], x)) > 0.95
  assert np.linalg.norm(theta[0, :-1]) < 0.2 * np.linalg.norm(theta[1, :-1])


def test_a_horizon_with_no_future_events_is_one_line_exit_2_nothing_written(prepared, tmp_path):
  from tessera_testing import run_cli
  result = run_cli("--config", "configs/ehr_jepa.py:tiny", "--workdir", tmp_path / "w",
                   f"--config.data.path={prepared}", "--config.data.horizon_days=1e-6", check=False)
  assert result.returncode == 2 and "data.horizon_days" in result.stderr, result.stderr
  assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "w").exists()
