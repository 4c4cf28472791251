"""The EHR world model of jepa_ehr.md §5, registered as "ehr_world": a decoder LM (the online encoder f_θ), a
predictor g_φ and an EMA target encoder f_ξ kept as model state.

The online encoder *is* the decoder (a subclass, so its params keep the decoder's paths: `embed`, `blocks`, ...,
and `init.map` / `train.trainable` patterns written for LMs apply unchanged). The target is a plain `Decoder` whose
variables are `ModelState`, not `Param`: the trainer keeps it in `state["model_state"]`, never differentiates it and
gives it no optimizer state (spec §5 "EMA"); the objective's after-update rule (tessera.losses.ehr_jepa) moves it.
At construction it is an exact copy of the online params (spec: "target initialised as an exact copy of θ").

Predictor (spec §5): LayerNorm -> Dense(d -> 2d) -> GELU -> Dense(2d -> d). `updates` counts optimizer steps
(ModelState) so the loss can follow the curriculum schedule without the trainer passing the step to `loss_fn`.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from tessera.models import config_checks
from tessera.models import decoder as decoder_lib
from tessera.models import registry
from tessera.models.layers import ModelState


def as_model_state(module):
  """A copy of `module` whose every Param is a ModelState with the same value and logical axes (no new init)."""
  graphdef, state = nnx.split(module)

  def convert(variable):
    if isinstance(variable, nnx.Param):
      return ModelState.from_metadata(variable.get_value(), variable.get_metadata())
    return variable
  state = jax.tree.map(convert, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


def hidden_states(decoder, tokens_BxT, positions_BxT=None, segment_ids_BxT=None):
  """(final-norm hidden states h_BxTxD in fp32, pre-norm residual stream x_BxTxD) of any Decoder: the embedding the
  spec's probes and latent loss read (§2: "final-layer hidden state"; §7: "final-norm hidden state")."""
  if positions_BxT is None:
    positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
  x_BxTxD = jnp.take(decoder.embed[...], tokens_BxT, axis=0).astype(decoder.dtype)
  x_BxTxD = decoder._run_blocks(x_BxTxD, segment_ids_BxT, positions_BxT)
  return decoder.final_norm(x_BxTxD).astype(jnp.float32), x_BxTxD


class Predictor(nnx.Module):
  """g_φ: LayerNorm -> Dense(d, 2d) -> GELU -> Dense(2d, d) (spec §5; the width is the project default)."""

  def __init__(self, cfg, rngs):
    d = cfg.d_model
    axes = ("norm",)
    self.norm_scale = nnx.Param(nnx.with_partitioning(nnx.initializers.ones, axes)(None, (d,), jnp.float32))
    self.norm_bias = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros, axes)(None, (d,), jnp.float32))
    # fan-in init (std = fan_in^-0.5, PyTorch Linear scale; the spec leaves it open): ẑ starts at O(1) spread
    # instead of the LM's init_std-sized outputs, so the collapse monitor (std of ẑ) starts healthy.
    fan_in = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    self.w1 = nnx.Param(nnx.with_partitioning(fan_in, ("embed", "mlp"))(rngs.params(), (d, 2 * d), jnp.float32))
    self.b1 = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros, ("mlp",))(None, (2 * d,), jnp.float32))
    self.w2 = nnx.Param(nnx.with_partitioning(fan_in, ("mlp", "embed"))(rngs.params(), (2 * d, d), jnp.float32))
    self.b2 = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros, ("norm",))(None, (d,), jnp.float32))
    self.eps = cfg.norm_eps

  def __call__(self, z_BxD):
    z_BxD = z_BxD.astype(jnp.float32)
    mean_Bx1 = jnp.mean(z_BxD, axis=-1, keepdims=True)
    var_Bx1 = jnp.var(z_BxD, axis=-1, keepdims=True)
    z_BxD = (z_BxD - mean_Bx1) * jax.lax.rsqrt(var_Bx1 + self.eps) * self.norm_scale[...] + self.norm_bias[...]
    h_BxF = jax.nn.gelu(z_BxD @ self.w1[...].astype(jnp.float32) + self.b1[...])
    return h_BxF @ self.w2[...].astype(jnp.float32) + self.b2[...]


class EHRWorld(decoder_lib.Decoder):
  """Online decoder (this module's own params) + `predictor` + `target` (ModelState copy) + `updates` counter."""

  def __init__(self, cfg, rngs):
    super().__init__(cfg, rngs)
    backbone = nnx.eval_shape(lambda: decoder_lib.Decoder(cfg, nnx.Rngs(0)))
    graphdef = nnx.graphdef(backbone)
    online = nnx.merge(graphdef, nnx.state(self))  # only the backbone exists yet: the same variables
    self.target = as_model_state(online)
    self.predictor = Predictor(cfg, rngs)
    self.updates = ModelState(jnp.zeros((), jnp.int32), out_sharding=())

  def hidden(self, tokens_BxT, positions_BxT=None):
    """(online final-norm hidden states h_BxTxD fp32, logits_BxTxV fp32) in one forward."""
    h_BxTxD, x_BxTxD = hidden_states(self, tokens_BxT, positions_BxT)
    return h_BxTxD, self._logits(x_BxTxD)

  def target_hidden(self, tokens_BxT, positions_BxT=None):
    """The EMA target's final-norm hidden states, under stop_gradient (spec §5: no gradient reaches ξ)."""
    h_BxTxD, _ = hidden_states(self.target, tokens_BxT, positions_BxT)
    return jax.lax.stop_gradient(h_BxTxD)


@registry.register("ehr_world")
def build(cfg, rngs: nnx.Rngs) -> EHRWorld:
  return EHRWorld(cfg, rngs)


@registry.checks("ehr_world")
def check(config):
  """The decoder's keys (the backbone is one)."""
  config_checks.check_decoder(config)


@registry.accounting("ehr_world")
def accounting(cfg, seq_len):
  """Decoder counts plus the predictor; FLOPs add the target's forward (the dual forward pass: 2 of the online
  pass's 6 FLOPs per param-token), so MFU counts the work the step really does."""
  counts = decoder_lib.accounting(cfg, seq_len)
  predictor = 4 * cfg.d_model * cfg.d_model + 5 * cfg.d_model
  counts["params_total"] += predictor
  counts["params_non_embedding"] += predictor
  counts["train_flops_per_token"] *= 8 / 6
  return counts
