"""Acceptance check 1 (zett.md): surface forms of hand-picked strings through the old tokenizer's model."""
import pytest

from tessera.data import zett_sampler
from tessera.data import zett_surface
from zett_helpers import hand_tokenizer

N_SRC = 128  # S rows (the LM's padded vocab): extra byte ids start here


@pytest.fixture(scope="module")
def forms():
  return zett_surface.SurfaceForms(hand_tokenizer(), N_SRC)


def test_single_old_token_multi_piece_and_missing_bytes(forms):
  assert forms.pad_id == 0
  assert forms.piece_ids("abc") == [6]  # an old token: itself
  assert forms.piece_ids("Ġabcab") == [4, 6, 5]  # the BPE model alone (merge ranks: ab, abc before Ġa)
  assert forms.piece_ids("Ġac") == [7, 3]
  assert forms.piece_ids("aÃ©b") == [1, N_SRC + 0xC3, N_SRC + 0xA9, 2]  # 'é' = bytes C3 A9, not in the old vocab


def test_matrix_rows_special_truncation_padding(forms):
  new = zett_sampler.unigram_tokenizer([("abc", -1.0), ("Ġab", -2.0), ("Ã©", -3.0), ("cccccccccccccccccccc", -4.0)])
  vocab = new.get_vocab()
  arrays = forms.arrays(new, n_slots=512)
  row = lambda piece: arrays.surface_NxL[vocab[piece]].tolist()
  assert row("abc") == [6, 0, 0, 0, 0, 0, 0]
  assert row("Ġab") == [4, 5, 0, 0, 0, 0, 0]  # Ġ, ab: merge order ab before Ġa
  assert row("Ã©") == [N_SRC + 0xC3, N_SRC + 0xA9, 0, 0, 0, 0, 0]
  assert row("cccccccccccccccccccc") == [3] * 7  # 20 pieces truncated to 7
  assert vocab["<eos>"] == 0 and row("<eos>") == [0] * 7 and arrays.special_N[0] == 0
  assert (arrays.special_N[1:] == -1).all()
  n = new.get_vocab_size()
  assert arrays.valid_N[:n].all() and not arrays.valid_N[n:].any()
  assert arrays.bytes_N[vocab["Ã©"]] == 2 and arrays.bytes_N[vocab["Ġab"]] == 3 and arrays.bytes_N[0] == 0


def test_a_vocabulary_larger_than_the_slots_is_refused(forms):
  new = zett_sampler.unigram_tokenizer([(c, -1.0) for c in zett_sampler.BYTE_CHARS[:150]])
  with pytest.raises(ValueError, match="151 tokens, more than the configured 100 slots"):
    forms.arrays(new, n_slots=100)
  assert forms.arrays(new, n_slots=256).surface_NxL.shape == (256, 7)
