"""Bad Hugging Face input: one line naming the file and tensor, exit 2, nothing written (checked on headers only,
before any weight is read)."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import hf_helpers

import_hf = hf_helpers.import_script("import_hf")


def unsupported_architecture(folder):
  cfg = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**cfg, "architectures": ["MistralForCausalLM"]}))
  return "config.json", "MistralForCausalLM"


def missing_shard(folder):
  (folder / "model-00002-of-00002.safetensors").unlink()
  return "model-00002-of-00002.safetensors", "model."


def wrong_shape(folder):
  file = folder / "model-00001-of-00002.safetensors"
  tensors = load_file(str(file))
  name = next(n for n in sorted(tensors) if n.endswith("k_proj.weight"))
  tensors[name] = np.zeros((7, 32), np.float32)
  save_file(tensors, str(file))
  return "model-00001-of-00002.safetensors", name


def unreadable_dtype(folder):
  file = folder / "model-00002-of-00002.safetensors"
  tensors = load_file(str(file))
  name = sorted(tensors)[0]
  tensors[name] = tensors[name].astype(np.int8)
  save_file(tensors, str(file))
  return "model-00002-of-00002.safetensors", name


@pytest.mark.parametrize("damage", [unsupported_architecture, missing_shard, wrong_shape, unreadable_dtype],
                         ids=lambda f: f.__name__)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, damage):
  folder = tmp_path / "hf"
  hf_helpers.write_hf_folder(folder, hf_helpers.LLAMA, shards=2)
  file, tensor = damage(folder)
  capsys.readouterr()
  assert import_hf.main(["--model", str(folder), "--out", str(tmp_path / "run")]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("error: "), err
  assert file in err and tensor in err, err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no run, no partial directory
