"""The cache on a (data=4, tensor=2) mesh of 8 fake CPU devices: rows over data, KV heads over tensor, and the same
tokens as one device (greedy, sampled, bounded cache; 3 prompts padded to 4 rows)."""
from tessera_testing import run_json_script

SCRIPT = r"""
import json, sys, jax
from flax import nnx
from jax.sharding import AxisType
sys.path.insert(0, "tests/generation")
from gen_helpers import build, cfg, prompts
from tessera.models import generate, kv_cache
RULES = (("batch", ("data", "fsdp")), ("vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"),
         ("q_heads", "tensor"), ("kv_heads", "tensor"), ("head_dim", None), ("layers", None), ("norm", None))
model = build(cfg("decoder", n_heads=4, n_kv_heads=2))
batch = prompts([5, 9, 2])
runs = {"greedy": {}, "sampled": dict(sampling=generate.Sampling(temperature=1.0, top_k=16, seed=4)),
        "window": dict(policy=kv_cache.Policy("window", budget=8, buffer=2))}
out = {"one": {k: generate.generate(model, batch, 24, **kw).tokens for k, kw in runs.items()}}
mesh = jax.make_mesh((4, 1, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
  state = nnx.state(model)
  nnx.update(model, jax.device_put(state, nnx.get_named_sharding(state, mesh)))
  results = {k: generate.generate(model, batch, 24, **kw) for k, kw in runs.items()}
out["mesh"] = {k: r.tokens for k, r in results.items()}
k = results["greedy"].cache.layers[0].k_BxCxKxE
out["spec"] = [str(a) for a in k.sharding.spec]
out["shard"] = list(k.addressable_shards[0].data.shape)
out["shape"] = list(k.shape)
print(json.dumps(out))
"""


def test_sharded_cache_gives_the_tokens_of_one_device():
  out = run_json_script(SCRIPT, devices=8)
  assert out["mesh"] == out["one"]
  B, C, K, E = out["shape"]
  assert B == 4 and out["shard"] == [1, C, 1, E], out  # rows over data=4, KV heads over tensor=2
