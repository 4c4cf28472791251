"""Heuristic embedding initialisations for a new tokenizer, the baselines of zett.md §7 and issue 13 (numpy).

- FVT (Gee et al. 2022): a new token's row = the mean of its old pieces' rows (full decomposition, no truncation);
  pieces that are missing bytes (extra ids) are skipped, a token with none gets the mean row.
- lexical copy: a token whose string is an old token copies that row; the rest are random.
- random: N(mean, std) per dimension of the original table (the scale the LM expects).
Special tokens always take their original rows (as the hypernetwork's, §3.9). All return (E_in [V, d], E_out [V, d]).
"""
import numpy as np


def _random_like(table_VxD, n, rng):
  return rng.normal(table_VxD.mean(0), table_VxD.std(0), size=(n, table_VxD.shape[1])).astype(np.float32)


def _specials(out, arrays, table):
  rows = arrays.special_N >= 0
  out[rows] = table[arrays.special_N[rows]]
  return out


def fvt(forms, new_vocab, arrays, e_in, e_out):
  """Mean of old-piece rows per new token (`forms`: zett_surface.SurfaceForms, `new_vocab`: {piece: id})."""
  tables = []
  for table in (e_in, e_out):
    out = np.zeros((arrays.surface_NxL.shape[0], table.shape[1]), np.float32)
    mean = table.mean(0)
    for piece, i in new_vocab.items():
      if arrays.special_N[i] >= 0:
        continue
      ids = [j for j in forms.piece_ids(piece) if j < table.shape[0]]
      out[i] = table[ids].mean(0) if ids else mean
    tables.append(_specials(out, arrays, table))
  return tuple(tables)


def lexical(old_vocab, new_vocab, arrays, e_in, e_out, seed=0):
  """Rows copied for strings present in both vocabularies; random elsewhere."""
  rng = np.random.default_rng(seed)
  tables = []
  for table in (e_in, e_out):
    out = _random_like(table, arrays.surface_NxL.shape[0], rng)
    for piece, i in new_vocab.items():
      if piece in old_vocab and old_vocab[piece] < table.shape[0]:
        out[i] = table[old_vocab[piece]]
    tables.append(_specials(out, arrays, table))
  return tuple(tables)


def random_init(arrays, e_in, e_out, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(_specials(_random_like(t, arrays.surface_NxL.shape[0], rng), arrays, t) for t in (e_in, e_out))
