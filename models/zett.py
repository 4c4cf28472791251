"""ZeTT: a hypernetwork that predicts a frozen LM's embeddings for any tokenizer (zett.md §3), model "zett".

Params: `lm/...` the frozen decoder (loaded from the base run with init.map ["^(.*)$=lm/\\1"]), `hypernet/...` and
`fallback` (256 learned rows for bytes missing from the old vocabulary, §3.1) -- the trained part
(train.trainable "^(hypernet|fallback)"). The rescalers (§3.3, §3.8) are `ModelState`: never differentiated, no
optimizer state. They must be fitted on the *loaded* LM, which the trainer loads after building the model, so they
are fitted lazily: until `fitted` is set, every forward computes them from the current S and hypernetwork (under
stop_gradient), and the objective's after-update rule stores them at step 0 (the warmup's learning rate is 0
there, so the stored values are exactly those of the initial hypernetwork). From then on they never change.

`model(tokens)` is the original LM (generation, the end-of-run sample); `predict` and `logits` are the method.
"""
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from tessera.models import decoder
from tessera.models import registry
from tessera.models import zett_buckets
from tessera.models import zett_optim  # noqa: F401  (registers the two-stage LR update)
from tessera.models.layers import ModelState
from tessera.models.zett_hypernet import Hypernet

N_FALLBACK = 256  # one row per byte value (§3.1 "extra" ids = n_src + byte)
MASKED_LOGIT = -1e5  # §3.10: added to padded vocabulary slots
ANCHORS = 2048  # §3.8: the first 2048 original tokens fit the output rescaler
INIT_RANGE = 0.02  # §3.3: the input rescaler's target std per column
RESIDUAL_STD_RATIO = 0.1  # residual variant: hypernet output starts at 0.1 x E's std (project default, App. D silent)

DEFAULTS = dict(hidden=256, ffn=512, n_layers=3, n_heads=4, maxlen=7, n_slots=2176, residual=False)


def add_keys(c):
  """model.zett keys (§3, §8 sizes; n_slots = n_total + 128 padded slots)."""
  c.model.zett = ml_collections.ConfigDict(dict(DEFAULTS))
  return c


def _moments(x_NxD):
  return jnp.mean(x_NxD, 0), jnp.std(x_NxD, 0) + 1e-8


class ZettModel(nnx.Module):

  def __init__(self, cfg, rngs):
    z = cfg.zett
    self.lm = decoder.Decoder(cfg, rngs)
    self.tied = cfg.tie_embeddings
    self.d, self.n_src, self.maxlen, self.residual = cfg.d_model, cfg.vocab_size, z.maxlen, z.residual
    src_dim = self.d * (1 if self.tied else 2)
    self.hypernet = Hypernet(src_dim, self.d, z, rngs)
    self.fallback = nnx.Param(nnx.with_partitioning(nnx.initializers.normal(INIT_RANGE), (None, None))(
        rngs.params(), (N_FALLBACK, src_dim)))
    ones, zeros = lambda n: jnp.ones((n,), jnp.float32), lambda n: jnp.zeros((n,), jnp.float32)
    self.rescale = nnx.Dict(in_scale=ModelState(ones(src_dim)), in_shift=ModelState(zeros(src_dim)),
                            out_in_scale=ModelState(ones(self.d)), out_in_shift=ModelState(zeros(self.d)),
                            out_out_scale=ModelState(ones(self.d)), out_out_shift=ModelState(zeros(self.d)),
                            fitted=ModelState(jnp.zeros((), jnp.float32)))

  # ---- the frozen LM's tables ----

  def e_in(self):
    return jax.lax.stop_gradient(self.lm.embed[...].astype(jnp.float32))

  def e_out(self):
    table = self.lm.embed[...] if self.tied else self.lm.unembed[...].T
    return jax.lax.stop_gradient(table.astype(jnp.float32))

  def source(self):
    """S = [E_in, E_out] (§3.2), rows = the LM's vocab (already padded to a multiple of 128)."""
    return self.e_in() if self.tied else jnp.concatenate([self.e_in(), self.e_out()], -1)

  # ---- rescalers ----

  def _fit(self):
    """Rescaler values from the current S and hypernetwork (§3.3, §3.8)."""
    mean_S, std_S = _moments(self.source())
    in_scale = INIT_RANGE / std_S
    in_shift = -mean_S * in_scale
    anchors = min(ANCHORS, self.n_src)
    surface_AxL = jnp.arange(anchors, dtype=jnp.int32)[:, None]  # one piece: L = 1 computes the same as padding
    raw_in, raw_out = self._raw(surface_AxL, in_scale, in_shift)
    out = []
    for raw, table in ((raw_in, self.e_in()), (raw_out, self.e_out())):
      mean_P, std_P = _moments(raw)
      mean_E, std_E = _moments(table[:anchors])
      if self.residual:
        mean_E, std_E = jnp.zeros_like(mean_E), RESIDUAL_STD_RATIO * std_E
      scale = std_E / std_P
      out += [scale, mean_E - mean_P * scale]
    return jax.lax.stop_gradient((in_scale, in_shift, *out))

  def _stored(self):
    r = self.rescale
    return tuple(r[k][...] for k in ("in_scale", "in_shift", "out_in_scale", "out_in_shift", "out_out_scale",
                                     "out_out_shift"))

  def rescalers(self):
    return jax.lax.cond(self.rescale["fitted"][...] > 0, self._stored, self._fit)

  def fit_rescalers(self):
    """Stores the rescalers once (the after-update rule calls this every step; only the first one writes)."""
    values = self.rescalers()
    for k, v in zip(("in_scale", "in_shift", "out_in_scale", "out_in_shift", "out_out_scale", "out_out_shift"),
                    values):
      self.rescale[k][...] = v
    self.rescale["fitted"][...] = jnp.ones((), jnp.float32)

  # ---- the hypernetwork ----

  def _raw(self, surface_NxL, in_scale, in_shift):
    """Head outputs before the output rescaler. `surface_NxL` < 0 marks padding (callers map the pad id)."""
    src_VxS = self.source() * in_scale + in_shift
    table = jnp.concatenate([src_VxS, self.fallback[...].astype(jnp.float32)], 0)

    def encode(pieces_MxK):
      mask_MxK = (pieces_MxK >= 0).at[:, 0].set(True)
      return self.hypernet(jnp.take(table, jnp.maximum(pieces_MxK, 0), axis=0), mask_MxK)

    return zett_buckets.encode_by_length(encode, surface_NxL)

  def predict(self, surface_NxL, pad_id, special_N=None):
    """(Ê_in, Ê_out) [N, d] for new tokens given their surface forms (§3.1-3.9; residual variant §3.11).

    Any L <= maxlen works: padding pieces are masked keys (weight exactly 0) and position 0 is what is pooled, so
    single-piece rows can be passed as [N, 1] (the identity stage does: 7x less encoder work)."""
    in_scale, in_shift, oi_scale, oi_shift, oo_scale, oo_shift = self.rescalers()
    pieces_NxL = jnp.where(jnp.arange(surface_NxL.shape[1]) == 0, surface_NxL,
                           jnp.where(surface_NxL == pad_id, -1, surface_NxL))
    raw_in, raw_out = self._raw(pieces_NxL, in_scale, in_shift)
    e_in, e_out = raw_in * oi_scale + oi_shift, raw_out * oo_scale + oo_shift
    first_N = surface_NxL[:, 0]
    if self.residual:
      known_N = (first_N < self.n_src)[:, None]
      e_in = e_in + jnp.where(known_N, jnp.take(self.e_in(), jnp.minimum(first_N, self.n_src - 1), 0), 0.0)
      e_out = e_out + jnp.where(known_N, jnp.take(self.e_out(), jnp.minimum(first_N, self.n_src - 1), 0), 0.0)
    if special_N is not None:
      is_special = (special_N >= 0)[:, None]
      e_in = jnp.where(is_special, jnp.take(self.e_in(), jnp.maximum(special_N, 0), 0), e_in)
      e_out = jnp.where(is_special, jnp.take(self.e_out(), jnp.maximum(special_N, 0), 0), e_out)
    return e_in, e_out

  # ---- the LM under new embeddings ----

  def logits(self, tokens_BxT, e_in_NxD, e_out_NxD, valid_N):
    """The frozen LM with E_in <- Ê_in and lm_head <- Ê_out^T (§3.10); padded slots get -1e5."""
    lm = self.lm
    x_BxTxD = jnp.take(e_in_NxD, tokens_BxT, axis=0).astype(lm.dtype)
    positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    x_BxTxD = lm.final_norm(lm._run_blocks(x_BxTxD, None, positions_BxT))
    logits_BxTxN = jnp.einsum("btd,nd->btn", x_BxTxD, e_out_NxD.astype(lm.dtype),
                              preferred_element_type=jnp.float32)
    return logits_BxTxN + jnp.where(valid_N, 0.0, MASKED_LOGIT)

  def __call__(self, tokens_BxT, **kwargs):
    """The original LM with its own embeddings (generation, eval of the base)."""
    return self.lm(tokens_BxT, **kwargs)

  def init_cache(self, batch, policy):
    return self.lm.init_cache(batch, policy)


@registry.register("zett")
def build(cfg, rngs):
  return ZettModel(cfg, rngs)


registry.sharding_rules("zett", (("hn_in", None), ("hn_out", None)))


@registry.checks("zett")
def check(config):
  z = config.model.get("zett")
  if z is None:
    raise ValueError("config key 'model.zett': missing (configs/zett.py adds it)")
  for key in ("hidden", "ffn", "n_layers", "n_heads", "maxlen", "n_slots"):
    if not isinstance(z[key], int) or z[key] < 1:
      raise ValueError(f"config key 'model.zett.{key}': must be a positive int, got {z[key]!r}")
  if z.hidden % z.n_heads:
    raise ValueError(f"config key 'model.zett.n_heads': {z.n_heads} does not divide model.zett.hidden={z.hidden}")
  if z.n_slots % config.train.batch_size:
    raise ValueError(f"config key 'model.zett.n_slots': {z.n_slots} must be a multiple of train.batch_size="
                     f"{config.train.batch_size} (the vocabulary travels split over the batch rows)")
  if config.train.microbatches != 1:
    raise ValueError("config key 'train.microbatches': zett needs 1 (a batch carries one sampled vocabulary)")
  if not isinstance(z.residual, bool):
    raise ValueError(f"config key 'model.zett.residual': must be a bool, got {z.residual!r}")


def hypernet_params(cfg):
  z = cfg.zett
  src = cfg.d_model * (1 if cfg.tie_embeddings else 2)
  block = 2 * z.hidden * z.ffn + z.ffn + 3 * z.hidden
  layer = 4 * (z.hidden ** 2 + z.hidden) + 2 * z.hidden * z.ffn + z.ffn + 5 * z.hidden
  head = block + z.hidden * cfg.d_model + cfg.d_model
  return (src * z.hidden + z.hidden + block + (z.maxlen + 3) * z.hidden + 2 * z.hidden + z.n_layers * layer
          + 2 * head + N_FALLBACK * src)


@registry.accounting("zett")
def accounting(cfg, seq_len):
  """Trained params = hypernet + fallback; FLOPs: the frozen LM's forward and input-gradient backward (4x its
  matmul params per token, no weight gradients) plus the hypernet's 6x over the vocabulary, spread per token."""
  lm = decoder.param_count(cfg)
  return {"params_total": lm["total"] + hypernet_params(cfg), "params_trained": hypernet_params(cfg),
          "train_flops_per_token": float(4 * lm["non_embedding"] + 4 * cfg.d_model * cfg.zett.n_slots)}
