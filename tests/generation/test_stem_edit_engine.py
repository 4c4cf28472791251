"""Knowledge editing on the engine: edited prompts and one-token edits of generated tokens equal a cache-free
recompute with the edit applied to the whole sequence."""
import jax.numpy as jnp
import numpy as np
import pytest

from gen_helpers import build, cfg, prompts
from tessera.models import stem_edit
from tessera.models.generate import recompute_logits


@pytest.mark.parametrize("target", [[9], [9, 17]])  # replace (one for one) and mean (two target rows)
def test_one_token_edit_applies_to_prompt_and_generated_tokens(target):
  model = build(cfg("stem"))
  (prompt,) = prompts([6], seed=2)
  before, _ = stem_edit.continue_greedy(model, prompt, 24)
  source = [max(set(before), key=before.count)]  # a token the model generates, so decode-time edits matter
  prompt = prompt + source
  after, logp_after = stem_edit.continue_greedy(model, prompt, 24, source, target)
  assert source[0] in after[:-1]  # a generated SOURCE was fed back, edited
  seq_T = prompt + after[:-1]
  stem_ids_T, override, mode = stem_edit.edit(seq_T, source, target)
  assert mode == ("replace" if len(target) == 1 else "mean")
  kwargs = {"stem_ids_BxT": jnp.asarray(stem_ids_T)[None]}
  if override is not None:
    kwargs["stem_row_override"] = tuple(jnp.asarray(x)[None] for x in override)
  ref_TxV = np.asarray(recompute_logits(model, np.asarray([seq_T]), **kwargs))[0, len(prompt) - 1:]
  assert ref_TxV.argmax(-1).tolist() == after
  ref_logp = ref_TxV - np.log(np.exp(ref_TxV - ref_TxV.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
      ref_TxV.max(-1, keepdims=True)
  np.testing.assert_allclose(np.stack(logp_after), ref_logp, atol=1e-4)
