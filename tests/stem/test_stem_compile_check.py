"""scripts/compile_check lists each STEM table apart from the total (stem.md §7): per device, the table shard, its
AdamW moments and its dense gradient, 4·V·F/shards values in fp32."""
import json
import subprocess

from tessera_testing import ROOT


def test_compile_check_has_one_memory_line_per_stem_table():
  result = subprocess.run(["scripts/compile_check", "--config", "configs/stem.py:tiny", "--devices", "2", "--hbm-gb",
                           "1", "--config.mesh.data=1", "--config.mesh.tensor=2", "--config.model.stem.layers=[0,1]"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  tables = report["group_tensors"]
  assert [t["path"] for t in tables] == ["blocks/0/mlp/stem_table", "blocks/1/mlp/stem_table"]
  V, F = 384, 192  # tiny: byte vocab padded to 384, d_ff 192; "mlp" -> tensor shards F in two
  for t in tables:
    assert t["shape"] == [V, F] and t["shard_shape"] == [V, F // 2] and t["update"] == "adamw"
    assert t["param_gb"] * 1e9 == V * F // 2 * 4 and t["optimizer_gb"] == 2 * t["param_gb"]
    assert t["gradient_gb"] == t["param_gb"] and t["memory"] == "device"
  lines = [line for line in result.stdout.splitlines() if line.strip().startswith("table:")]
  assert len(lines) == 2 and "blocks/1/mlp/stem_table [384, 192] float32 in device memory" in lines[1]
