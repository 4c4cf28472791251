"""Sampling from a run through the generation engine (tessera.models.generate): the trainer's end-of-run sample and
`scripts/sample`. The flags are checked here, before any model is built: one ConfigError line, exit 2."""
import dataclasses
import sys
import time

import jax

from tessera.models import generate as engine
from tessera.models import kv_cache
from tessera.trainer.config_loader import ConfigError


def _encode(tokenizer, prompt):
  """An empty prompt starts from eos (how documents are separated in training)."""
  return list(tokenizer.encode(prompt)) or [getattr(tokenizer, "eos_id", 0)]


def generate_batch(factory, params, tokenizer, prompts, max_new_tokens, policy=kv_cache.Policy(),
                   sampling=engine.Sampling()):
  """The continuations (text) of `prompts`, decoded as one batch by the engine over `factory.model(params)`."""
  with factory.context():
    model = factory.model(params)  # stored 8-bit weights (scripts/quantize) are decoded here
    try:
      kv_cache.check_model(policy, model)  # e.g. a policy that ranks by per-token scores the model cannot write
    except ValueError as e:
      raise ConfigError(str(e).splitlines()[0]) from None
    out = engine.generate(model, [_encode(tokenizer, p) for p in prompts], max_new_tokens,
                          vocab_size=tokenizer.vocab_size, policy=policy, sampling=sampling)
  return [tokenizer.decode(ids) for ids in out.tokens]


def generate(factory, params, tokenizer, prompt, max_new_tokens, window, temperature=0.0, seed=0):
  """Continues `prompt` by up to `max_new_tokens` tokens with a full KV cache, stopping at the tokenizer's eos.

  `window` (the training seq_len) no longer bounds the context: positions past it extrapolate through RoPE.
  """
  del window
  sampling = engine.Sampling(temperature=temperature, seed=seed, eos_id=getattr(tokenizer, "eos_id", None))
  return generate_batch(factory, params, tokenizer, [prompt], max_new_tokens, sampling=sampling)[0]


def read_prompts(args):
  """--prompt TEXT or --prompts FILE (one prompt per line) -> a non-empty list of prompts."""
  if (args.prompt is None) == (args.prompts is None):
    raise ConfigError("sample: give exactly one of --prompt TEXT or --prompts FILE")
  if args.prompt is not None:
    return [args.prompt]
  try:
    with open(args.prompts, encoding="utf-8") as f:
      prompts = f.read().splitlines()
  except OSError as e:
    raise ConfigError(f"--prompts: cannot read {args.prompts!r} ({e.strerror})") from None
  if not prompts:
    raise ConfigError(f"--prompts: {args.prompts!r} holds no prompt (one prompt per line)")
  return prompts


def options(args):
  """(kv_cache.Policy, generate.Sampling without eos) from the sample flags; every bad value is a ConfigError."""
  if args.max_new_tokens <= 0:
    raise ConfigError(f"--max-new-tokens: must be >= 1 (got {args.max_new_tokens})")
  if not args.temperature >= 0:
    raise ConfigError(f"--temperature: must be >= 0 (got {args.temperature})")
  if args.top_k < 0:
    raise ConfigError(f"--top-k: must be >= 0 (got {args.top_k})")
  if not 0 < args.top_p <= 1:
    raise ConfigError(f"--top-p: must be in (0, 1] (got {args.top_p})")
  if args.kv_policy not in kv_cache.names():
    raise ConfigError(f"--kv-policy: unknown policy {args.kv_policy!r}; known: {', '.join(kv_cache.names())}")
  bounded = args.kv_policy != "full"
  if args.kv_budget is not None and args.kv_budget <= 0:
    raise ConfigError(f"--kv-budget: must be >= 1 (got {args.kv_budget})")
  if bounded and args.kv_budget is None:
    raise ConfigError(f"--kv-budget: --kv-policy {args.kv_policy} needs a budget M (cache entries per KV head)")
  if not bounded and (args.kv_budget, args.kv_buffer, args.kv_sinks) != (None, None, None):
    raise ConfigError("--kv-budget/--kv-buffer/--kv-sinks: the full cache takes none (it holds every token)")
  if args.kv_buffer is not None and args.kv_buffer <= 0:
    raise ConfigError(f"--kv-buffer: must be >= 1 (got {args.kv_buffer})")
  sinks = args.kv_sinks if args.kv_sinks is not None else (4 if args.kv_policy == "sink_window" else 0)
  if bounded and not 0 <= sinks < args.kv_budget:
    raise ConfigError(f"--kv-sinks: must be in [0, --kv-budget={args.kv_budget}) (got {sinks})")
  policy = kv_cache.Policy(args.kv_policy, budget=args.kv_budget or 0, buffer=args.kv_buffer, sinks=sinks,
                           seed=args.seed)
  sampling = engine.Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
  return policy, sampling


def one_line(text):
  """A continuation on one stdout line: "\\", newlines and carriage returns escaped."""
  return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def run(args, load):
  """`scripts/sample`: checks the flags, loads the run (`load(workdir)`, inspect_run.load), decodes every prompt
  as one batch; returns stdout's text (each prompt + continuation; one line each with --prompts)."""
  prompts = read_prompts(args)
  policy, sampling = options(args)
  config, factory, params, step, pipeline = load(args.workdir)
  tokenizer = pipeline.tokenizer
  sampling = dataclasses.replace(sampling, eos_id=getattr(tokenizer, "eos_id", None))
  start = time.perf_counter()
  texts = generate_batch(factory, params, tokenizer, prompts, args.max_new_tokens, policy, sampling)
  seconds = time.perf_counter() - start
  if jax.process_index() == 0:
    print(f"sample: step {step}, {len(prompts)} prompt(s), up to {args.max_new_tokens} new tokens, "
          f"kv {policy.name}{'' if policy.name == 'full' else f' M={policy.budget} capacity={policy.capacity}'}, "
          f"{seconds:.1f} s (compile included)", file=sys.stderr)
  if args.prompts is None:
    return prompts[0] + texts[0]
  return "\n".join(one_line(p + t) for p, t in zip(prompts, texts))
