"""scripts/import_hf: a Hugging Face Llama / Qwen3 model folder -> a tessera run that computes the same function.

  scripts/import_hf --model DIR --out runs/qwen3_base [--data PREPARED_DIR] [--param-dtype float32|bfloat16]
  scripts/eval --workdir runs/qwen3_base; scripts/sample --workdir runs/qwen3_base --prompt "def "
  scripts/train --workdir runs/qwen3_base --config.train.steps=200        # continue it (fresh optimizer at step 0)
  scripts/train --config configs/trimkv.py:small --config.init.workdir=runs/qwen3_base ...   # as a base

DIR holds config.json, model.safetensors (or model-0000x-of-0000y.safetensors + model.safetensors.index.json) and,
when present, tokenizer.json / tokenizer_config.json. Every check (architecture, shards, tensor names, shapes,
dtypes) reads only config.json and the safetensors headers and runs before anything is written: bad input is one
line naming the file and tensor, exit 2. Weights are then read file by file, one tensor at a time, straight into
their target shardings (jax.make_array_from_callback: each device takes its slice of the one host tensor).
The run (config.json, checkpoints/0, tokenizer/, hf/config.json, import.json, data/) is assembled under a hidden
name and renamed at the end, so a failure leaves nothing behind.
Exit codes: 0 done, 2 bad input (one line on stderr), 1 anything else.
"""
import argparse
import json
import pathlib
import shutil
import struct
import sys
import tempfile

import jax
import numpy as np

from tessera.models import hf_config
from tessera.models import hf_names
from tessera.models.hf_config import HFError
from tessera.trainer import workdir as workdir_lib

READABLE_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": "bfloat16", "F64": np.float64}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")
INDEX_FILE = "model.safetensors.index.json"


def parse_args(argv):
  p = argparse.ArgumentParser(prog="scripts/import_hf", description=__doc__.splitlines()[0])
  p.add_argument("--model", required=True, type=pathlib.Path, help="a Hugging Face model folder")
  p.add_argument("--out", required=True, type=pathlib.Path, help="new run directory (must not exist)")
  p.add_argument("--data", type=pathlib.Path, default=None,
                 help="a prepared dataset (scripts/prepare_text --tokenizer-file DIR/tokenizer.json) for eval and "
                      "training; default: the embedded corpus encoded with the model's tokenizer into OUT/data")
  p.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"),
                 help="dtype of the run's params (float32 holds bf16 and fp16 checkpoints exactly)")
  p.add_argument("--fsdp", type=int, default=1, help="config.mesh.fsdp of the run (the import reads into it)")
  p.add_argument("--tensor", type=int, default=1, help="config.mesh.tensor of the run (the import reads into it)")
  p.add_argument("--params-only", action="store_true",
                 help="checkpoint only {step, params, frozen, model_state} (no optimizer state): for eval, sample "
                      "and init.workdir; `scripts/train --workdir OUT` needs the full state")
  return p.parse_args(argv)


# ---- checks: headers only ----

def read_json(path):
  try:
    return json.loads(path.read_text())
  except OSError as e:
    raise HFError(f"{path}: cannot read ({e.strerror or e})") from None
  except ValueError as e:
    raise HFError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None


def safetensors_header(path):
  """{tensor name: (dtype string, shape)} from a .safetensors header (8-byte length + JSON), read by hand so an
  unknown dtype is reported with its tensor's name instead of failing the whole file."""
  try:
    with open(path, "rb") as f:
      (length,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(length))
  except (OSError, struct.error, ValueError) as e:
    raise HFError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:160]})") from None
  return {name: (info["dtype"], tuple(info["shape"])) for name, info in header.items() if name != "__metadata__"}


def weight_files(model_dir):
  """{tensor name: file} over the checkpoint's files: the index's weight_map, or the one model.safetensors."""
  index = model_dir / INDEX_FILE
  if index.exists():
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise HFError(f"{index}: no weight_map")
    for name, file in sorted(weight_map.items()):
      if not (model_dir / file).is_file():
        raise HFError(f"{model_dir / file}: shard missing (listed in {INDEX_FILE} for tensor {name})")
    return {name: model_dir / file for name, file in weight_map.items()}
  single = model_dir / "model.safetensors"
  if not single.is_file():
    raise HFError(f"{model_dir}: no model.safetensors or {INDEX_FILE}")
  return {name: single for name in safetensors_header(single)}


def check_tensors(model, files):
  """The import plan [(entry, file, dtype)] after checking every tensor's presence, dtype and shape against
  config.json (HFError on the first problem; nothing has been read but headers)."""
  headers = {f: safetensors_header(f) for f in sorted(set(files.values()))}
  expected = hf_names.entries(model)
  known = {e.hf for e in expected}
  for name, file in sorted(files.items()):
    if name not in headers[file]:
      raise HFError(f"{file}: has no tensor {name} (listed in {INDEX_FILE})")
    if name not in known and not hf_names.ignorable(name, model):
      raise HFError(f"{file}: tensor {name} is not part of the architecture config.json describes "
                    "(unsupported option or another model)")
  plan = []
  for entry in expected:
    if entry.hf not in files:
      raise HFError(f"{sorted(headers)[0].parent}: no tensor {entry.hf} in any safetensors file")
    file = files[entry.hf]
    dtype, shape = headers[file][entry.hf]
    if dtype not in READABLE_DTYPES:
      raise HFError(f"{file}: tensor {entry.hf} has dtype {dtype}, which cannot be read as float weights "
                    f"(readable: {', '.join(READABLE_DTYPES)})")
    if shape != entry.hf_shape:
      raise HFError(f"{file}: tensor {entry.hf} has shape {list(shape)} but config.json implies "
                    f"{list(entry.hf_shape)}")
    plan.append((entry, file, dtype))
  return plan


def tessera_config(model_keys, param_dtype, data_path, fsdp=1, tensor=1):
  """A complete run config: the spine's defaults, the translated model, fine-tuning-sized optimizer defaults,
  the mesh the weights are read into (and the run trains on)."""
  from tessera.configs import defaults
  c = defaults.base_config()
  c.model.update(model_keys)
  c.mesh.update(fsdp=fsdp, tensor=tensor)
  c.model.update(param_dtype=param_dtype, dtype=param_dtype)
  c.optim.lr = 1e-5  # a pretrained model: the spine's 3e-3 is a from-scratch rate
  c.optim.warmup_steps = 0  # fixed in config.json (not a train.steps reference): any train.steps stays valid
  c.data.path = str(data_path) if data_path else ""
  return c


def check_config(c):
  from tessera.trainer import validate
  from tessera.trainer import zoo
  from tessera.trainer.config_loader import ConfigError
  try:
    validate.validate(c)
    zoo.check(c)
  except (ConfigError, ValueError) as e:
    raise HFError(f"config.json: translates to an invalid tessera config ({str(e).splitlines()[0]})") from None


def check_data(data_dir, vocab_size):
  stats = data_dir / "stats.json"
  if not stats.is_file():
    raise HFError(f"--data: {stats} not found (prepare it with scripts/prepare_text --tokenizer-file ...)")
  tokens = read_json(stats).get("vocab_size", 0)
  if tokens > vocab_size:
    raise HFError(f"--data: {data_dir}'s tokenizer has {tokens} tokens, more than the model's vocab_size "
                  f"{vocab_size}")


# ---- reading: shard by shard into the target shardings ----

def load_params(factory, plan, param_dtype):
  """The whole params tree as device arrays in the run's shardings, one host tensor at a time."""
  from safetensors import safe_open
  shardings = factory.all_params(factory.param_shardings, factory.frozen_shardings)
  abstract = factory.all_params(factory.abstract_params, factory.abstract_frozen)
  params = {}
  by_file = {}
  for entry, file, _ in plan:
    by_file.setdefault(file, []).append(entry)
  for file, file_entries in by_file.items():
    with safe_open(str(file), framework="numpy") as f:
      for entry in file_entries:
        host = entry.layout.to_tessera(f.get_tensor(entry.hf), entry.heads).astype(param_dtype)
        target = hf_names.get_path(abstract, entry.path)
        if host.shape != tuple(target.shape):
          raise AssertionError(f"{entry.hf} -> {hf_names.path_name(entry.path)}: {host.shape} vs {target.shape}")
        array = jax.make_array_from_callback(host.shape, hf_names.get_path(shardings, entry.path),
                                             lambda index, host=host: host[index])
        hf_names.set_path(params, entry.path, array)
        del host
  mapped = {hf_names.path_name(e.path) for e, _, _ in plan}
  for path, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    if name not in mapped:
      raise AssertionError(f"param {name} has no Hugging Face tensor (hf_names is incomplete)")
  return params


# ---- writing ----

def prepare_embedded(tokenizer_file, out_dir):
  """The embedded corpus encoded with the model's own tokenizer (scripts/prepare_text --tokenizer-file)."""
  from tessera.data import embedded_corpus
  from tessera.data import prepare_text
  with tempfile.TemporaryDirectory() as texts:
    for i, doc in enumerate(embedded_corpus.documents()):
      (pathlib.Path(texts) / f"{i:05d}.txt").write_text(doc.text)
    prepare_text.prepare(["--input", texts, "--out", str(out_dir), "--tokenizer-file", str(tokenizer_file)])


def write_run(args, hf, config, plan, tmp):
  from tessera.trainer import checkpoint as ckpt_lib
  from tessera.trainer import config_loader
  from tessera.trainer import mesh as mesh_lib
  from tessera.trainer import state as state_lib
  from tessera.trainer import workdir as workdir_lib
  import jax.numpy as jnp
  factory = state_lib.StateFactory(config, mesh_lib.make_mesh(config))
  params = load_params(factory, plan, np.dtype(jnp.dtype(args.param_dtype)))
  trained, frozen = factory.split_params(params)
  if args.params_only:
    state = {"step": jnp.asarray(0, jnp.int32), "params": trained, "frozen": frozen, "model_state": {}}
  else:
    state = factory.from_variables(trained, frozen, {}, jax.random.fold_in(jax.random.key(config.seed), 1))
  checkpointer = ckpt_lib.Checkpointer(tmp, config.checkpoint)
  checkpointer.save(0, state, {"next_batch": 0})
  checkpointer.close()
  workdir_lib.write_json(tmp / "config.json", config_loader.to_dict(config))
  (tmp / "hf").mkdir()
  workdir_lib.write_json(tmp / "hf" / "config.json", hf)
  copied = [name for name in TOKENIZER_FILES if (args.model / name).is_file()]
  if copied:
    (tmp / "tokenizer").mkdir()
    for name in copied:
      shutil.copy2(args.model / name, tmp / "tokenizer" / name)
  summary = {"source": str(args.model.resolve()), "architecture": hf["architectures"][0],
             "tensors": len(plan), "files": len({f for _, f, _ in plan}),
             "source_dtypes": sorted({d for _, _, d in plan}), "param_dtype": args.param_dtype,
             "params": int(sum(np.prod(e.hf_shape) for e, _, _ in plan)), "tokenizer": copied,
             "data": config.data.path or "embedded (byte tokens)", "optimizer_state": not args.params_only}
  workdir_lib.write_json(tmp / "import.json", summary)
  return summary


def run(args):
  out = args.out.resolve()
  if out.exists():
    raise HFError(f"--out: {out} already exists; choose a new directory (nothing was written)")
  model_dir = args.model
  if not (model_dir / "config.json").is_file():
    raise HFError(f"--model: {model_dir}/config.json not found (not a Hugging Face model folder)")
  hf = read_json(model_dir / "config.json")
  keys = hf_config.model_keys(hf, str(model_dir / "config.json"))
  from tessera.configs import defaults
  model = defaults.base_config().model
  model.update(keys)
  plan = check_tensors(model, weight_files(model_dir))
  tokenizer = model_dir / "tokenizer.json"
  if args.data is not None:
    check_data(args.data, keys["vocab_size"])
    data_path = args.data.resolve()
  elif tokenizer.is_file():
    data_path = out / "data"
  else:
    data_path = None
    print(f"warning: {model_dir} has no tokenizer.json; the run reads the embedded corpus as byte tokens",
          file=sys.stderr)
  config = tessera_config(keys, args.param_dtype, data_path, args.fsdp, args.tensor)
  check_config(config)
  if jax.device_count() % (args.fsdp * args.tensor):
    raise HFError(f"--fsdp {args.fsdp} --tensor {args.tensor}: {jax.device_count()} devices are not a multiple "
                  f"of {args.fsdp * args.tensor}")
  with workdir_lib.staged(out) as tmp:
    if args.data is None and tokenizer.is_file():
      prepare_embedded(tokenizer, tmp / "data")
    summary = write_run(args, hf, config, plan, tmp)
  return summary


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from tessera.data.prepare_io import DataError
  try:
    summary = run(args)
  except (HFError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"out": str(args.out), **summary}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
