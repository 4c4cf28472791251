"""`scripts/transfer_tokenizer --workdir runs/zett --tokenizer NEW/tokenizer.json --out runs/base_newtok`.

Applies a trained ZeTT hypernetwork once to a whole target vocabulary (zett.md §6, last paragraph) and writes a
normal tessera run: config.json (model "decoder" with vocab_size = the target's size, or `--vocab-size`),
checkpoints/<step>/ holding the frozen LM's params with embed <- Ê_in and unembed <- Ê_outᵀ, tokenizer.json, and
data/ (the ZeTT train split prepared with the new tokenizer: the run's own tokenizer drives its text pipeline).
`scripts/eval --workdir OUT` and `scripts/sample --workdir OUT` then read it like any run; continued training (the
paper's n-shot) is `scripts/train --config configs/zett_continue.py:OUT --init-from OUT --workdir NEXT` (the
checkpoint holds params only, no optimizer state, as scripts/quantize's outputs).
A target without special tokens gets `<eos>` (prepared tokenizers do the same); it maps to the old eos and takes
the original embeddings (§3.9). Exit 2 with one line, nothing written: a file that is not a `tokenizers` JSON, a
target vocabulary larger than `--vocab-size`, a `--workdir` that is not a ZeTT run, an existing `--out`.
"""
import argparse
import json
import pathlib
import sys

import jax
import numpy as np

from tessera.data import prepare_text
from tessera.data import text_tokenizer
from tessera.data import zett_corpus
from tessera.data import zett_surface
from tessera.data.prepare_io import DataError
from tessera.trainer import checkpoint as ckpt_lib
from tessera.trainer import config_loader
from tessera.trainer import inspect_run
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import state as state_lib
from tessera.trainer import workdir as workdir_lib
from tessera.trainer.config_loader import ConfigError

CHUNK = 2048  # target tokens per hypernetwork call


def parse(argv):
  p = argparse.ArgumentParser(prog="transfer_tokenizer", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a trained ZeTT run (model.name 'zett')")
  p.add_argument("--tokenizer", required=True, help="the target tokenizer.json (Hugging Face tokenizers format)")
  p.add_argument("--out", required=True, help="the new run directory (must not exist)")
  p.add_argument("--method", default="hypernet", choices=("hypernet", "fvt", "lexical", "random"),
                 help="how the new rows are made: the hypernetwork (default) or a baseline (tessera.models."
                      "zett_baselines), for comparisons that start from the same LM")
  p.add_argument("--vocab-size", type=int, default=0,
                 help="the output LM's vocabulary rows (0: the target's size); a larger target is refused")
  return p.parse_args(argv)


def check(args):
  """Every check that needs no device work; returns (source, out, config, target tokenizer)."""
  source, out = ckpt_lib.absolute(args.workdir), ckpt_lib.absolute(args.out)
  if out.exists():
    raise ConfigError(f"--out: {out} already exists; choose a new directory (nothing was written)")
  if not (source / "config.json").is_file():
    raise ConfigError(f"--workdir: {source}/config.json not found (not a tessera run)")
  config = config_loader.from_json(source / "config.json")
  if config.model.name != "zett" or not (source / "data" / "tokenizer.json").is_file():
    raise ConfigError(f"--workdir: {source} is not a ZeTT run (model.name {config.model.name!r}; needs 'zett' and "
                      "data/tokenizer.json)")
  if ckpt_lib.latest_step(source) is None:
    raise ConfigError(f"--workdir: {source}/checkpoints has no checkpoint")
  try:
    target = text_tokenizer.load_file(pathlib.Path(args.tokenizer))
  except DataError as e:
    raise ConfigError(f"--tokenizer: {e}") from None
  complete = getattr(text_tokenizer, "with_special_tokens", None)
  if complete is not None:  # the special tokens prepared data adds (<pad>, ...), before the vocabulary is sized
    complete(target)
  size = target.get_vocab_size(with_added_tokens=True)
  if args.vocab_size and size > args.vocab_size:
    raise ConfigError(f"--tokenizer: {size} tokens exceed --vocab-size {args.vocab_size}")
  if args.vocab_size < 0:
    raise ConfigError(f"--vocab-size: must be >= 0, got {args.vocab_size}")
  return source, out, config, target


def predict_tables(model, arrays, pad_id):
  """(Ê_in [V, d], Ê_out [V, d]) for every slot, CHUNK rows per jitted call; padded slots stay 0."""
  from flax import nnx
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, surface, special):
    return nnx.merge(graphdef, state).predict(surface, pad_id, special)

  n = arrays.surface_NxL.shape[0]
  pad = -n % CHUNK
  surface = np.concatenate([arrays.surface_NxL, np.full((pad, arrays.surface_NxL.shape[1]), pad_id, np.int32)])
  special = np.concatenate([arrays.special_N, np.full((pad,), -1, np.int32)])
  outs = [run(state, surface[i:i + CHUNK], special[i:i + CHUNK]) for i in range(0, n + pad, CHUNK)]
  e_in = np.concatenate([np.asarray(o[0]) for o in outs])[:n]
  e_out = np.concatenate([np.asarray(o[1]) for o in outs])[:n]
  keep = arrays.valid_N[:, None]
  return np.where(keep, e_in, 0.0), np.where(keep, e_out, 0.0)


def tables(method, model, forms, old, target, arrays, seed=0):
  """(Ê_in, Ê_out) numpy [V, d] for `target` by `method` (the hypernetwork or a zett_baselines heuristic)."""
  if method == "hypernet":
    return predict_tables(model, arrays, forms.pad_id)
  from tessera.models import zett_baselines
  e_in, e_out = np.asarray(model.e_in()), np.asarray(model.e_out())
  vocab = target.get_vocab(with_added_tokens=True)
  if method == "fvt":
    return zett_baselines.fvt(forms, vocab, arrays, e_in, e_out)
  if method == "lexical":
    return zett_baselines.lexical(old.get_vocab(with_added_tokens=True), vocab, arrays, e_in, e_out, seed)
  return zett_baselines.random_init(arrays, e_in, e_out, seed)


def decoder_config(zett_config, vocab_size, data_dir):
  """The zett run's LM as a plain decoder run over `data_dir` (prepared with the new tokenizer)."""
  value = config_loader.to_dict(zett_config)
  for section, key in (("model", "zett"), ("loss", "zett"), ("data", "zett"), ("data", "bpe_vocab_size"),
                       ("data", "cache_dir"), ("data", "max_docs"), ("data", "base_workdir")):
    value[section].pop(key, None)
  value["model"].update(name="decoder", vocab_size=vocab_size)
  value["loss"] = {"name": "next_token"}
  value["data"].update(name="embedded", path=str(data_dir))
  value["train"]["trainable"] = ".*"
  value["init"] = {"workdir": "", "map": [], "strict": False}
  value["sample"]["max_new_tokens"] = 80
  return value


def prepare_data(tokenizer_path, out_dir, max_docs):
  """The ZeTT train split (as the source run read it) encoded with the target tokenizer (prepare_text's format)."""
  jsonl = out_dir.parent / "train.jsonl"
  with jsonl.open("w") as f:
    for doc in zett_corpus.train_docs(max_docs):
      if doc.text.strip():
        f.write(json.dumps({"text": doc.text}) + "\n")
  prepare_text.prepare(["--input", str(jsonl), "--out", str(out_dir), "--tokenizer-file", str(tokenizer_path)])
  jsonl.unlink()


def transfer(args):
  source, out, config, target = check(args)
  _, factory, variables, step, _ = inspect_run.load_variables(source)
  old = text_tokenizer.load_file(source / "data" / "tokenizer.json")
  forms = zett_surface.SurfaceForms(old, config.model.vocab_size, config.model.zett.maxlen)
  size = target.get_vocab_size(with_added_tokens=True)
  vocab_size = args.vocab_size or size
  arrays = forms.arrays(target, vocab_size)
  with factory.context():
    model = factory.model(variables["params"], variables["frozen"], variables["model_state"])
    e_in, e_out = tables(args.method, model, forms, old, target, arrays)
  params = factory.all_params(jax.device_get(variables["params"]), jax.device_get(variables["frozen"]))
  lm = jax.tree.map(np.asarray, params["lm"])
  lm["embed"] = e_in.astype(lm["embed"].dtype)
  lm["unembed"] = e_out.T.astype(lm["unembed"].dtype)
  with workdir_lib.staged(out) as tmp:
    tokenizer_path = tmp / "tokenizer.json"
    target.save(str(tokenizer_path))
    prepare_data(tokenizer_path, tmp / "data", config.data.get("max_docs", 0))
    value = decoder_config(config, vocab_size, out / "data")
    workdir_lib.write_json(tmp / "config.json", value)
    new_config = config_loader.from_json(tmp / "config.json")
    with new_config.unlocked():
      new_config.mesh.update(dict(data=-1, fsdp=1, tensor=1))
    new_factory = state_lib.StateFactory(new_config, mesh_lib.make_mesh(new_config))
    inspect_run.save_params(tmp, new_factory, step, jax.device_put(lm, new_factory.all_params(
        new_factory.param_shardings, new_factory.frozen_shardings)))
    summary = {"source": str(source), "step": step, "tokenizer": str(args.tokenizer), "method": args.method,
               "vocab_size": vocab_size,
               "target_tokens": size, "special_rows": int((arrays.special_N >= 0).sum()),
               "single_piece_tokens": int(((arrays.surface_NxL[:, 1:] == forms.pad_id).all(1)
                                           & arrays.valid_N).sum())}
    workdir_lib.write_json(tmp / "summary.json", summary)
  return summary


def main(argv=None):
  args = parse(sys.argv[1:] if argv is None else argv)
  try:
    summary = transfer(args)
  except ConfigError as e:
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
