"""scripts/bench_ops.py attributes a real trace's op time to the code regions that emitted it; scripts/bench
--shapes writes the issue-20 JSON layout (slow: a tiny shape through both steps)."""
import json

import jax
import jax.numpy as jnp
import pytest

import plain_helpers as ph

bench_ops = ph.script("bench_ops")


def mlp(x, w):
  return jnp.tanh(x @ w)


def logits(x, w):
  return jnp.sum(jax.nn.logsumexp(x @ w.T, axis=-1))


def test_breakdown_names_regions(tmp_path):
  step = jax.jit(lambda x, w: logits(mlp(x, w), w))
  x, w = jnp.ones((256, 128)), jnp.full((128, 128), 0.01)
  step(x, w).block_until_ready()
  with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
    for _ in range(2):
      step(x, w).block_until_ready()
  (tmp_path / "hlo.txt").write_text(step.lower(x, w).compile().as_text())
  rows = bench_ops.breakdown(tmp_path, 2)
  names = {name for name, ms, share in rows}
  assert {"mlp", "head + loss"} <= names, rows
  assert abs(sum(share for _, _, share in rows) - 1) < 1e-6
  assert "| region | ms/step | share |" in bench_ops.markdown(rows)


@pytest.mark.slow  # ~30 s: a tiny shape, one round, plain and tessera, fp32 and bf16
def test_bench_shapes_json_layout(tmp_path, monkeypatch):
  import subprocess
  import sys
  out = tmp_path / "bench.json"
  subprocess.run([sys.executable, str(ph.ROOT / "scripts" / "bench.py"), "--shapes", "tiny", "--rounds", "1",
                  "--steps", "2", "--set", "loss.fused_ce_chunk=64", "--json", str(out)], check=True, cwd=ph.ROOT)
  result = json.loads(out.read_text())
  assert set(result["peaks"]) == {"float32", "bfloat16"}
  row = result["shapes"]["tiny"]
  for policy in ("float32", "bfloat16"):
    assert {"tokens_per_second", "gflops", "vs_plain", "plain"} <= set(row[policy])
  assert row["best"]["policy"] in ("float32", "bfloat16") and row["best"]["vs_plain"] > 0
