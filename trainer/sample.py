"""Greedy or temperature sampling by re-running the model over a fixed window (small models, no KV cache)."""
import jax
import jax.numpy as jnp
import numpy as np


def generate(factory, params, tokenizer, prompt, max_new_tokens, window, temperature=0.0, seed=0):
  """Continues `prompt` by `max_new_tokens` tokens; the context is the last `window` tokens."""
  vocab = tokenizer.vocab_size

  @jax.jit
  def next_token(params, tokens_1xW, length, key):
    logits_1xWxV = factory.model(params)(tokens_1xW)
    logits_V = logits_1xWxV[0, length - 1, :vocab]
    if temperature > 0:
      return jax.random.categorical(key, logits_V / temperature)
    return jnp.argmax(logits_V)

  ids = list(tokenizer.encode(prompt)) or [0]
  key = jax.random.key(seed)
  new = []
  with factory.context():
    for i in range(max_new_tokens):
      context = (ids + new)[-window:]
      tokens = np.zeros((1, window), np.int32)
      tokens[0, :len(context)] = context
      token = int(next_token(params, jnp.asarray(tokens), len(context), jax.random.fold_in(key, i)))
      new.append(token)
  return tokenizer.decode(new)
