"""`scripts/edit_knowledge --workdir RUN --prompt TEXT --swap SOURCE=TARGET [--mode replace|mean]`.

Restores the run's latest params, then prints the greedy continuation of PROMPT (generation engine, KV cache) with
the normal STEM lookups and with SOURCE's lookup ids pointed at TARGET's rows (tessera.models.stem_edit), plus how
much the edit moved the logits. Exit 2 for a bad flag, a non-STEM run, or a SOURCE that does not occur in the prompt.
"""
import argparse
import json
import sys

import numpy as np

from tessera.models import stem_edit
from tessera.trainer import inspect_run
from tessera.trainer.config_loader import ConfigError


def parse(argv):
  p = argparse.ArgumentParser(prog="edit_knowledge", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a STEM run directory (config.json and checkpoints/)")
  p.add_argument("--prompt", required=True, help="the text continued before and after the edit")
  p.add_argument("--swap", required=True, help="SOURCE=TARGET: SOURCE's lookups read TARGET's rows")
  p.add_argument("--mode", default="replace", choices=("replace", "align", "mean"),
                 help="replace: one-for-one ids when token counts match (else falls back to mean); align: TARGET's "
                      "ids fitted to SOURCE's length (repeated when shorter, its longest tokens by bytes when "
                      "longer; stem.md section 9), then replaced one for one; mean: the mean of TARGET's rows at "
                      "every SOURCE position")
  p.add_argument("--max-new-tokens", type=int, default=40,
                 help="tokens generated per continuation (default: %(default)s)")
  p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
  return p.parse_args(argv)


def run(args):
  source, sep, target = args.swap.partition("=")
  if not sep or not source or not target:
    raise ConfigError(f"--swap: expected SOURCE=TARGET, got {args.swap!r}")
  config, factory, params, step, pipeline = inspect_run.load(args.workdir)
  if config.model.name != "stem":
    raise ConfigError(f"--workdir: model.name is {config.model.name!r}; knowledge editing needs a STEM model")
  tokenizer = pipeline.tokenizer
  prompt, source_ids, target_ids = (list(tokenizer.encode(s)) for s in (args.prompt, source, target))
  if not stem_edit.occurrences(prompt, source_ids):
    raise ConfigError(f"--swap: {source!r} does not occur in the prompt's tokens")
  if args.mode == "align":
    token_bytes = {t: len(tokenizer.decode([t]).encode("utf-8")) for t in set(target_ids)}
    target_ids = stem_edit.aligned_target(source_ids, target_ids, token_bytes)
  _, _, mode = stem_edit.edit(prompt, source_ids, target_ids, "replace" if args.mode == "align" else args.mode)

  before, logp_before, after, logp_after = continuations(factory, params, prompt, source_ids, target_ids, mode,
                                                         args.max_new_tokens, tokenizer.vocab_size)
  first = before[0]
  result = {
      "step": step, "mode": "align" if args.mode == "align" else mode, "source_tokens": len(source_ids), "target_tokens": len(target_ids),
      "before": tokenizer.decode(before), "after": tokenizer.decode(after),
      "max_abs_logprob_change_next_token": float(np.abs(logp_after[0] - logp_before[0]).max()),
      "logprob_of_unedited_next_token": [float(logp_before[0][first]), float(logp_after[0][first])],
  }
  if args.mode == "replace" and mode == "mean":
    print(f"note: {source!r} is {len(source_ids)} tokens and {target!r} is {len(target_ids)}: "
          "using the mean of the target's rows at every source position (--mode mean)", file=sys.stderr)
  return result


def continuations(factory, params, prompt, source_ids, target_ids, mode, max_new_tokens, vocab_size):
  """Greedy continuations without and with the edit, by the generation engine (stem_edit.continue_greedy):
  (before ids, before log-probs, after ids, after log-probs)."""
  with factory.context():
    model = factory.model(params)
    before, logp_before = stem_edit.continue_greedy(model, prompt, max_new_tokens, vocab_size=vocab_size)
    after, logp_after = stem_edit.continue_greedy(model, prompt, max_new_tokens, source_ids, target_ids, mode,
                                                  vocab_size=vocab_size)
  return before, logp_before, after, logp_after


def main(argv=None):
  args = parse(sys.argv[1:] if argv is None else argv)
  try:
    result = run(args)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps(result))
    return 0
  print(f"prompt: {args.prompt!r}   swap: {args.swap!r}   mode: {result['mode']}   (step {result['step']})")
  print(f"before: {args.prompt + result['before']!r}")
  print(f"after:  {args.prompt + result['after']!r}")
  a, b = result["logprob_of_unedited_next_token"]
  print(f"next-token log-prob change: max {result['max_abs_logprob_change_next_token']:.4f}; "
        f"the unedited next token {a:.4f} -> {b:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
