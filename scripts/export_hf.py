"""scripts/export_hf: a tessera run's latest params -> a Hugging Face folder that transformers loads.

  scripts/export_hf --workdir runs/qwen3_base --out hf/qwen3_tuned [--dtype float32|bfloat16] [--shard-mb 4096]
  AutoModelForCausalLM.from_pretrained("hf/qwen3_tuned"); AutoTokenizer.from_pretrained("hf/qwen3_tuned")

Writes config.json (LlamaForCausalLM, or Qwen3ForCausalLM when model.qk_norm), model.safetensors (or shards +
model.safetensors.index.json above --shard-mb) in HF names and layouts (tessera.models.hf_names), and the
tokenizer: the files an imported run kept in tokenizer/, else its prepared data's tokenizer.json, else the byte
tokenizer of the embedded corpus (same ids). Params of a model built on the decoder that HF has no name for
(TRIM-KV's retention gates, ...) go to <model.name>_extra.safetensors under their tessera paths.
Written under a hidden name and renamed at the end. Exit codes: 0 done, 2 bad input (one line), 1 anything else.
"""
import argparse
import json
import pathlib
import shutil
import sys

import jax
import numpy as np

from tessera.models import hf_config
from tessera.models import hf_names
from tessera.models.hf_config import HFError
from tessera.trainer import workdir as workdir_lib

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")


def parse_args(argv):
  p = argparse.ArgumentParser(prog="scripts/export_hf", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, type=pathlib.Path, help="a tessera run (config.json + checkpoints/)")
  p.add_argument("--out", required=True, type=pathlib.Path, help="new Hugging Face folder (must not exist)")
  p.add_argument("--dtype", default="stored", choices=("stored", "float32", "bfloat16"),
                 help="tensor dtype in the files (stored: the run's param dtype, bit for bit)")
  p.add_argument("--shard-mb", type=int, default=4096, help="largest safetensors file before sharding")
  return p.parse_args(argv)


def flat_params(params):
  """{path tuple: array} of a params tree (scanned blocks unstacked to per-layer paths)."""
  params = hf_names.unstack_layers(params)
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    out[tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)] = leaf
  return out


def hf_tensors(model, params, dtype):
  """({HF name: numpy array}, {tessera path name: numpy array} of params HF has no name for)."""
  flat = flat_params(params)
  tensors = {}
  for entry in hf_names.entries(model):
    if entry.path not in flat:
      raise HFError(f"checkpoint has no param {hf_names.path_name(entry.path)} (model {model.name!r} is not "
                    "built on the decoder)")
    host = np.asarray(jax.device_get(flat.pop(entry.path)))
    if dtype is not None:
      host = host.astype(dtype)
    tensors[entry.hf] = np.ascontiguousarray(entry.layout.to_hf(host, entry.heads))
  extra = {hf_names.path_name(p): np.ascontiguousarray(jax.device_get(a)) for p, a in flat.items()}
  return tensors, extra


def save_sharded(tensors, out, shard_bytes):
  """model.safetensors, or model-0000i-of-0000n.safetensors + index when the total exceeds `shard_bytes`."""
  from safetensors.numpy import save_file
  total = sum(a.nbytes for a in tensors.values())
  if total <= shard_bytes:
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return ["model.safetensors"]
  groups, size = [[]], 0
  for name, array in tensors.items():
    if groups[-1] and size + array.nbytes > shard_bytes:
      groups.append([])
      size = 0
    groups[-1].append(name)
    size += array.nbytes
  weight_map, files = {}, []
  for i, names in enumerate(groups):
    file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
    save_file({n: tensors[n] for n in names}, str(out / file), metadata={"format": "pt"})
    weight_map.update({n: file for n in names})
    files.append(file)
  (out / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  return files


def write_tokenizer(workdir, config, out):
  """The run's tokenizer as HF files; returns their names."""
  kept = workdir / "tokenizer"
  if kept.is_dir():
    names = [n for n in TOKENIZER_FILES if (kept / n).is_file()]
    for name in names:
      shutil.copy2(kept / name, out / name)
    return names
  from tessera.data import text_tokenizer
  prepared = pathlib.Path(config.data.path) / "tokenizer.json" if config.data.path else None
  if prepared is not None and prepared.is_file():
    tokenizer = text_tokenizer.load_file(prepared)
  elif config.data.name == "embedded":
    tokenizer = text_tokenizer.train("bytes", [], 0)  # the embedded pipeline's ids: byte b -> b, <eos> = 256
  else:
    return []
  tokenizer.save(str(out / "tokenizer.json"))
  eos = text_tokenizer.eos_token(tokenizer)
  (out / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "clean_up_tokenization_spaces": False},
      indent=2))
  return ["tokenizer.json", "tokenizer_config.json"]


def run(args):
  from tessera.models import quantized
  from tessera.trainer import inspect_run
  from tessera.trainer.config_loader import ConfigError
  out = args.out.resolve()
  if out.exists():
    raise HFError(f"--out: {out} already exists; choose a new directory (nothing was written)")
  try:
    config, factory, params, step, _ = inspect_run.load(args.workdir)
  except ConfigError as e:
    raise HFError(str(e)) from None
  model = config.model
  if model.get("weight_format", quantized.FLOAT) != quantized.FLOAT:
    raise HFError(f"--workdir: {args.workdir} holds {model.weight_format} codes; export a float run")
  if model.get("mlp", "swiglu") != "swiglu":
    raise HFError(f"model.mlp={model.mlp!r}: only 'swiglu' maps to a Hugging Face Llama/Qwen3 MLP "
                  "(nothing was written)")
  dtype = None if args.dtype == "stored" else np.dtype(jax.numpy.dtype(args.dtype))
  tensors, extra = hf_tensors(model, params, dtype)
  base_file = args.workdir / "hf" / "config.json"
  base = json.loads(base_file.read_text()) if base_file.is_file() else None
  hf = hf_config.hf_config(model, base)
  if dtype is not None:
    hf["torch_dtype"] = args.dtype
  with workdir_lib.staged(out) as tmp:
    files = save_sharded(tensors, tmp, args.shard_mb * 2 ** 20)
    if extra:
      from safetensors.numpy import save_file
      extra_file = f"{model.name}_extra.safetensors"
      save_file(extra, str(tmp / extra_file), metadata={"format": "tessera", "step": str(step)})
      files.append(extra_file)
    (tmp / "config.json").write_text(json.dumps(hf, indent=2))
    tokenizer = write_tokenizer(args.workdir, config, tmp)
  return {"step": step, "architecture": hf["architectures"][0], "files": files, "tensors": len(tensors),
          "extra_tensors": len(extra), "tokenizer": tokenizer}


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    summary = run(args)
  except HFError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"out": str(args.out), **summary}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
