"""Small fixtures shared by the ZeTT tests: a hand-made old tokenizer and a tiny ZettModel."""
import jax
import jax.numpy as jnp
import tokenizers
from flax import nnx
from tokenizers import decoders, models, pre_tokenizers

from tessera.configs import zett as zett_config
from tessera.models import zett as zett_model


def hand_tokenizer():
  """A byte-level BPE over a few letters: 'a', 'b', 'c', 'Ġ' (space), merges ab, abc, Ġa; <eos> = 0.
  Every other byte (e.g. both bytes of 'é' = 'Ã©') is missing from its vocabulary."""
  vocab = {"<eos>": 0, "a": 1, "b": 2, "c": 3, "Ġ": 4, "ab": 5, "abc": 6, "Ġa": 7}
  merges = [("a", "b"), ("ab", "c"), ("Ġ", "a")]
  tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(["<eos>"])
  return tok


def tiny_model_config(residual=False, vocab_size=256):
  c = zett_config.build("tiny")
  c.model.vocab_size = vocab_size
  c.model.zett.residual = residual
  c.model.zett.n_slots = 256
  return c


def tiny_model(residual=False, seed=0, vocab_size=256):
  """A ZettModel whose frozen LM has random, non-centred embeddings (so the rescalers have work to do)."""
  c = tiny_model_config(residual, vocab_size)
  with nnx.use_eager_sharding(False):
    model = zett_model.build(c.model, nnx.Rngs(seed))
  k1, k2 = jax.random.split(jax.random.key(seed + 1))
  model.lm.embed[...] = 0.3 + 0.05 * jax.random.normal(k1, model.lm.embed[...].shape) * (1 + jnp.arange(
      model.lm.embed[...].shape[1]))
  model.lm.unembed[...] = -0.1 + 0.2 * jax.random.normal(k2, model.lm.unembed[...].shape)
  return model


def apply(model, fn):
  """fn(model) under jit (one compile instead of many eager op compiles)."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda state: fn(nnx.merge(graphdef, state)))(state)


def restore(*runs):
  """Saved states, one {keystr: numpy array} per (workdir, step), read with plain Orbax in one subprocess."""
  import subprocess
  import sys

  import numpy as np

  from tessera_testing import ROOT
  paths = [str(workdir / "checkpoints" / str(step) / "state") for workdir, step in runs]
  outs = [str(workdir.parent / f"{workdir.name}_{step}.npz") for workdir, step in runs]
  code = f"""
import jax, numpy as np, orbax.checkpoint as ocp
for path, out in zip({paths!r}, {outs!r}):
  state = ocp.PyTreeCheckpointer().restore(path)
  np.savez(out, **{{jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state)}})
"""
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
  return [dict(np.load(out)) for out in outs]
