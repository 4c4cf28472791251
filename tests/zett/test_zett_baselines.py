"""The heuristic baselines of the results table (FVT, lexical copy, random) on a hand-made old tokenizer."""
import numpy as np

from tessera.data import zett_sampler
from tessera.data import zett_surface
from tessera.models import zett_baselines
from zett_helpers import hand_tokenizer


def test_fvt_means_old_pieces_lexical_copies_specials_keep_their_rows():
  old = hand_tokenizer()
  forms = zett_surface.SurfaceForms(old, 8)
  new = zett_sampler.unigram_tokenizer([("abc", -1.0), ("Ġab", -2.0), ("cc", -3.0)])
  vocab = new.get_vocab()
  arrays = forms.arrays(new, new.get_vocab_size())
  rng = np.random.default_rng(0)
  e_in, e_out = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)
  f_in, f_out = zett_baselines.fvt(forms, vocab, arrays, e_in, e_out)
  np.testing.assert_allclose(f_in[vocab["Ġab"]], (e_in[4] + e_in[5]) / 2, rtol=1e-6)
  np.testing.assert_allclose(f_out[vocab["cc"]], e_out[3], rtol=1e-6)
  np.testing.assert_array_equal(f_in[vocab["<eos>"]], e_in[0])
  l_in, _ = zett_baselines.lexical(old.get_vocab(), vocab, arrays, e_in, e_out)
  np.testing.assert_array_equal(l_in[vocab["abc"]], e_in[6])
  assert not np.allclose(l_in[vocab["cc"]], e_in[3])
  r_in, _ = zett_baselines.random_init(arrays, e_in, e_out)
  np.testing.assert_array_equal(r_in[0], e_in[0])
  assert r_in.shape == (new.get_vocab_size(), 4)
