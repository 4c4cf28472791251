"""The retention-gated decoder (models/trimkv.py, trimkv_gate.py): paths, init, and spec acceptance checks 1-3, 5, 7
(shared/specs/trimkv.md "Acceptance checks at CPU scale")."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tessera.models import kernels
from tessera.models import trimkv_gate
from trimkv_helpers import GATE_PARAMS, apply, build, normal, scanned_copy, set_gate_bias, tiny_cfg, tokens


def flat_params(model):
  return {"/".join(map(str, path)): var[...] for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_gate_paths_shapes_and_init():
  """§3: gates are new leaves blocks/<i>/retention_gate/*, fp32, W ~ N(0, 0.02), b1 = 0, b = 10; every base
  param keeps the plain decoder's path and shape (so init.workdir loads a decoder run as is)."""
  cfg = tiny_cfg(gate=dict(gate_hidden=256), param_dtype="bfloat16")
  params = flat_params(build(cfg))
  base = {k: v for k, v in flat_params(build(tiny_cfg(name="decoder", param_dtype="bfloat16"), name="decoder")).items()}
  gates = {k: v for k, v in params.items() if "retention_gate" in k}
  assert {k: v.shape for k, v in params.items() if k not in gates} == {k: v.shape for k, v in base.items()}
  assert sorted(gates) == sorted(f"blocks/{i}/retention_gate/{p}" for i in range(2) for p in GATE_PARAMS)
  g = {p: gates[f"blocks/1/retention_gate/{p}"] for p in GATE_PARAMS}
  assert all(v.dtype == jnp.float32 for v in g.values())
  assert g["w1"].shape == (32, 256) and g["b1"].shape == (256,) and g["w2"].shape == (256, 2)
  assert g["bias"].shape == (2,)
  np.testing.assert_array_equal(g["bias"], 10.0)
  np.testing.assert_array_equal(g["b1"], 0.0)
  assert abs(float(jnp.std(g["w1"])) - 0.02) < 0.002 and abs(float(jnp.std(g["w2"])) - 0.02) < 0.004
  assert not np.array_equal(gates["blocks/0/retention_gate/w1"], gates["blocks/1/retention_gate/w1"])


def test_log_beta_shape_and_initial_value():
  """One fp32 scalar per (layer, KV head, token); at init beta ~ sigmoid(10): essentially no decay."""
  model = build(tiny_cfg())
  log_beta = apply(model, lambda m: m.log_beta(tokens((3, 12))))
  assert log_beta.shape == (2, 3, 2, 12) and log_beta.dtype == jnp.float32
  np.testing.assert_allclose(log_beta, jax.nn.log_sigmoid(10.0), rtol=0.05)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_identity_limit(scan_layers):
  """Check 1: gate bias 1e4 gives log beta == 0 exactly; gated attention equals vanilla attention (1e-6),
  the KL term is 0, and S_t = t + 1."""
  from tessera.losses import trimkv as trimkv_loss
  model = set_gate_bias(build(tiny_cfg(scan_layers=False)), 1e4)
  if scan_layers:  # the same params stacked
    model = scanned_copy(model, tiny_cfg(scan_layers=True))
  tok = tokens((2, 24))

  def run(m):
    student, occupancy = m(tok, return_occupancy=True)
    return student, m(tok, retention=False), occupancy, m.log_beta(tok)

  student, teacher, occupancy, log_beta = apply(model, run)
  np.testing.assert_array_equal(log_beta, 0.0)
  np.testing.assert_allclose(student, teacher, atol=1e-6, rtol=1e-6)
  kl = trimkv_loss.forward_kl(teacher, student, jnp.ones((2, 24)))
  assert abs(float(kl)) < 1e-6
  np.testing.assert_array_equal(occupancy, np.broadcast_to(np.arange(1, 25, dtype=np.float32), occupancy.shape))


def test_scan_and_remat_give_the_same_loss_and_gate_gradients():
  """The gated forward under scan_layers and remat="full" computes the unrolled function (occupancy included)."""
  tok = tokens((2, 16))
  unrolled = set_gate_bias(build(tiny_cfg()), 2.0)
  scanned = scanned_copy(unrolled, tiny_cfg(scan_layers=True, remat="full"))

  def loss_and_grads(model):
    graphdef, gates, rest = nnx.split(model, lambda path, _: "retention_gate" in path, ...)

    def loss(gates):
      logits, occupancy = nnx.merge(graphdef, gates, rest)(tok, return_occupancy=True)
      return jnp.mean(logits ** 2) + jnp.mean(occupancy)
    value, grads = jax.jit(jax.value_and_grad(loss))(gates)
    return value, {path: g[...] for path, g in nnx.to_flat_state(grads)}

  (l_u, g_u), (l_s, g_s) = loss_and_grads(unrolled), loss_and_grads(scanned)
  np.testing.assert_allclose(l_s, l_u, rtol=1e-6)
  for name in GATE_PARAMS:  # unrolled: one gradient per layer; scanned: stacked on a leading layer axis
    stacked = g_s[("blocks", "retention_gate", name)]
    for i in range(2):
      np.testing.assert_allclose(stacked[i], g_u[("blocks", i, "retention_gate", name)], rtol=1e-4, atol=1e-9)


HF_KEYS = dict(qk_norm=True, attn_bias=True, rope_scaling="llama3", rope_factor=8.0, rope_low_freq_factor=1.0,
               rope_high_freq_factor=4.0, rope_original_max_len=8)


@pytest.mark.parametrize("arch", [{}, HF_KEYS], ids=["llama", "qk_norm+bias+llama3_rope"])
def test_teacher_is_the_plain_decoder_bit_for_bit(arch):
  """retention=False runs decoder.Decoder's own forward on the shared weights: the frozen full-attention
  teacher is the base LM itself (no second copy, §5), whatever attention options the base uses; with the gate
  at its identity limit the gated forward matches it too (it shares Attention's projections)."""
  model = build(tiny_cfg(**arch))
  nnx.update(model, nnx.from_flat_state([  # non-zero biases, non-unit norms
      (path, var.replace(var[...] + 0.1 * normal(var.shape, i)))
      for i, (path, var) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.Param)))]))
  set_gate_bias(model, 1e4)
  base = build(tiny_cfg(name="decoder", **arch), name="decoder")
  flat = flat_params(model)
  nnx.update(base, nnx.from_flat_state([(path, var.replace(flat["/".join(map(str, path))]))
                                        for path, var in nnx.to_flat_state(nnx.state(base, nnx.Param))]))
  tok = tokens((2, 16))
  teacher = apply(model, lambda m: m(tok, retention=False))
  np.testing.assert_array_equal(teacher, apply(base, lambda m: m(tok)))
  np.testing.assert_allclose(apply(model, lambda m: m(tok)), teacher, rtol=1e-5, atol=1e-5)


def test_power_matrix_and_no_nan_at_4096():
  """Check 2: A[t, i] = beta_i^(t - i) below the diagonal, 1 on it, 0 above; no NaN/inf for log beta in [-50, 0]
  at T = 4096 in the chunked reference (forward and gradient) and in the occupancy."""
  log_beta = -jnp.asarray(np.random.default_rng(0).uniform(0, 2, (1, 2, 7)), jnp.float32)
  pos = jnp.arange(7)[None]
  A = trimkv_gate.retention_matrix(log_beta, pos, pos)
  beta = np.exp(np.asarray(log_beta, np.float64))
  for k, t, i in itertools.product(range(2), range(7), range(7)):
    want = beta[0, k, i] ** (t - i) if i <= t else 0.0
    np.testing.assert_allclose(float(A[0, k, t, i]), want, rtol=1e-5, atol=1e-30)
  T = 4096
  lb_1x1xT = -jnp.asarray(np.random.default_rng(1).uniform(0, 50, (1, 1, T)), jnp.float32)
  lb_1x1xT = lb_1x1xT.at[0, 0, :4].set(jnp.array([0.0, -50.0, -1e-8, -25.0]))
  q, k, v = normal((1, T, 1, 4), 1), normal((1, T, 1, 4), 2), normal((1, T, 1, 4), 3)

  @jax.jit
  def run(q, lb):
    def f(q, lb):
      return jnp.sum(kernels.attention(q, k, v, log_retention=lb, implementation="xla") ** 2)
    return f(q, lb), jax.grad(f, argnums=(0, 1))(q, lb), trimkv_gate.soft_occupancy(lb)

  out, (dq, dlb), occupancy = run(q, lb_1x1xT)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in (out, dq, dlb, occupancy))
  assert float(occupancy.min()) >= 1.0 and float(occupancy.max()) <= T


def test_pallas_matches_xla_on_the_model():
  """model.attention_impl=pallas (interpret mode on CPU) runs the Pallas kernel on the model's real shapes;
  logits and gate gradients match the XLA path."""
  tok = tokens((1, 32))

  def loss_and_gate_grads(impl):
    model = set_gate_bias(build(tiny_cfg(attention_impl=impl)), 1.0)  # strong decay: retention matters
    params = nnx.state(model, nnx.Param)
    graphdef, rest = nnx.split(model, nnx.Param, ...)[0], nnx.split(model, nnx.Param, ...)[2]

    def loss(params):
      return jnp.mean(nnx.merge(graphdef, params, rest)(tok) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  (l_x, g_x), (l_p, g_p) = loss_and_gate_grads("xla"), loss_and_gate_grads("pallas")
  np.testing.assert_allclose(l_p, l_x, rtol=1e-5)
  gx, gp = nnx.to_flat_state(g_x), nnx.to_flat_state(g_p)
  for (path, a), (_, b) in zip(gx, gp):
    if "retention_gate" in path:
      np.testing.assert_allclose(b[...], a[...], rtol=2e-4, atol=1e-7, err_msg=str(path))


def test_gqa_sharing_and_query_head_permutation():
  """Check 5: every query head of a group reads its KV head's beta: permuting the query heads inside a group
  permutes the attention outputs the same way (kernel), and permuting q/o params inside groups leaves the
  gated model's logits unchanged."""
  q, k, v = normal((2, 16, 4, 8), 1), normal((2, 16, 2, 8), 2), normal((2, 16, 2, 8), 3)
  lb = -jnp.abs(normal((2, 2, 16), 4))
  perm = jnp.array([1, 0, 3, 2])  # swaps inside group 0 (heads 0, 1) and group 1 (heads 2, 3)
  out = kernels.attention(q, k, v, log_retention=lb, implementation="xla")
  out_perm = kernels.attention(q[:, :, perm], k, v, log_retention=lb, implementation="xla")
  np.testing.assert_allclose(out_perm, out[:, :, perm], rtol=1e-6, atol=1e-6)
  model = set_gate_bias(build(tiny_cfg()), 1.0)
  tok = tokens((2, 16))
  want = apply(model, lambda m: m(tok))
  for block in model.blocks:
    block.attn.q[...] = block.attn.q[...][:, perm]
    block.attn.o[...] = block.attn.o[...][perm]
  np.testing.assert_allclose(apply(model, lambda m: m(tok)), want, rtol=1e-5, atol=1e-5)


def test_mode_switch():
  """Check 7: add_bias and mul_logit differ for non-trivial beta and agree for beta == 1."""
  tok = tokens((2, 16))
  out = {}
  for mode, bias in itertools.product(("mul_logit", "add_bias"), (1.0, 1e4)):
    out[mode, bias] = apply(set_gate_bias(build(tiny_cfg(gate=dict(retention_mode=mode))), bias), lambda m: m(tok))
  assert float(jnp.max(jnp.abs(out["mul_logit", 1.0] - out["add_bias", 1.0]))) > 1e-3
  np.testing.assert_allclose(out["mul_logit", 1e4], out["add_bias", 1e4], rtol=1e-5, atol=1e-6)  # fusion order


def test_occupancy_closed_form_double_loop_and_segments():
  """Check 3: constant beta gives S_t = (1 - beta^(t+1)) / (1 - beta) (rel 1e-5); random beta matches a double
  loop; with segment ids (positions restarting) only same-segment tokens count; chunking changes nothing."""
  T, beta = 40, 0.9
  S = trimkv_gate.soft_occupancy(jnp.full((1, 1, T), np.log(beta), jnp.float32))
  t = np.arange(T)
  np.testing.assert_allclose(S[0, 0], (1 - beta ** (t + 1)) / (1 - beta), rtol=1e-5)
  rng = np.random.default_rng(0)
  lb = -rng.uniform(0, 1, (2, 3, T)).astype(np.float32)
  seg = np.repeat(np.array([[0, 1, 2, 2], [5, 5, 5, 7]]), T // 4, axis=1)
  pos = np.stack([np.concatenate([np.arange((s == r).sum()) for s in np.unique(r)]) for r in seg])
  want = np.zeros((2, 3, T))
  for b, k, i, j in itertools.product(range(2), range(3), range(T), range(T)):
    if seg[b, i] == seg[b, j] and pos[b, j] <= pos[b, i]:
      want[b, k, i] += np.exp((pos[b, i] - pos[b, j]) * np.float64(lb[b, k, j]))
  got = trimkv_gate.soft_occupancy(jnp.asarray(lb), jnp.asarray(pos), jnp.asarray(seg))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  chunked = trimkv_gate.soft_occupancy(jnp.asarray(lb), jnp.asarray(pos), jnp.asarray(seg), q_chunk=16)
  np.testing.assert_allclose(chunked, got, rtol=1e-6)
