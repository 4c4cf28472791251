"""TRIM-KV (arXiv 2512.03324): the decoder of decoder.py with a retention gate per layer and KV head.

Registered as "trimkv". Every base parameter keeps the decoder's path (blocks/<i>/attn/q, ...), so
`init.workdir` loads any decoder run as is; the gates are new leaves `blocks/<i>/retention_gate/{w1,b1,w2,bias}`
that `train.trainable="retention_gate"` selects (shared/specs/trimkv.md §3, §6).

One set of weights, two forwards (§5):
  model(tokens)                      retention-gated attention (§4, `model.trimkv.retention_mode`) -> logits
  model(tokens, retention=False)     the plain decoder (beta == 1): bit-for-bit the base LM, the teacher
  model(tokens, return_occupancy=True) -> (logits, S [L, B, K, T]): soft occupancy for the capacity loss
With a KV cache (generation) the blocks run plain attention and store each token's log beta as its cache score:
beta only ranks tokens for eviction, by the "trimkv" policy of trimkv_cache.py (§7).
Keys: model.trimkv.{gate, gate_hidden, gate_bias_init, gate_init_std, retention_mode}.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from tessera.models import config_checks
from tessera.models import decoder
from tessera.models import layers
from tessera.models import registry
from tessera.models.attention import Attention
from tessera.models import trimkv_cache  # noqa: F401  (registers the "trimkv" cache policy)
from tessera.models.trimkv_gate import GATE_VARIANTS, RetentionGate, soft_occupancy

RETENTION_MODES = ("mul_logit", "add_bias")  # §4: mul_logit is the faithful one; add_bias a project variant
# model.attention_impl -> kernels.attention implementation: cuDNN has no retention term, so it falls to "auto"
# (Pallas on GPU, XLA elsewhere).
KERNEL_IMPL = {"xla": "xla", "xla_blocked": "xla", "pallas": "pallas", "cudnn": "auto", "auto": "auto"}


class RetentionAttention(Attention):
  """decoder's Attention (same params, same paths, its `_qkv` / `_out`: biases, q/k norm and RoPE scaling
  included) plus the retention-gated forward of §4 and a cached forward that keeps log beta."""

  def retained(self, x_BxTxD, segment_ids_BxT, positions_BxT, log_beta_BxKxT, mode):
    """softmax(alpha * q k / sqrt(d)) v with alpha[t, i] = beta_i^(t - i) (mul_logit) through
    kernels.attention(log_retention=...); GQA: every query head of a group uses its KV head's beta (§3)."""
    from tessera.models import kernels  # lazy, as attention.attend
    q_BxTxHxE, k_BxTxKxE, v_BxTxKxE = self._qkv(x_BxTxD, positions_BxT)
    out_BxTxHxE = kernels.attention(q_BxTxHxE, k_BxTxKxE, v_BxTxKxE, causal=True, segment_ids=segment_ids_BxT,
                                    q_positions=positions_BxT, kv_positions=positions_BxT,
                                    log_retention=log_beta_BxKxT, retention_mode=mode,
                                    implementation=KERNEL_IMPL[self.implementation])
    return self._out(out_BxTxHxE)

  def cached(self, x_BxTxD, positions_BxT, cache, live_BxT, log_beta_BxKxT):
    """attention.attend_cached with each token's log beta as its cache score (§7; used by "token" policies such
    as trimkv): decode attention is plain attention over the kept tokens (beta only ranks them)."""
    from tessera.models import attention  # the decoder's cached attention, scores passed through
    q_BxTxHxE, k_BxTxKxE, v_BxTxKxE = self._qkv(x_BxTxD, positions_BxT)
    out_BxTxHxE, cache = attention.attend_cached(q_BxTxHxE, k_BxTxKxE, v_BxTxKxE, positions_BxT, cache, live_BxT,
                                                 self.implementation, log_beta_BxKxT)
    return self._out(out_BxTxHxE), cache


class TrimKVBlock(decoder.Block):
  """decoder.Block plus `retention_gate` on the attention input. `__call__` without a cache is the plain block
  (the teacher); with a cache it stores each token's log beta for eviction (§7); `retained` is the gated training
  forward."""

  def __init__(self, cfg, rngs):  # noqa: super().__init__ not called: it would build a plain Attention
    self.attn_norm = layers.RMSNorm(cfg)  # the base block's modules, same names and rng order
    self.attn = RetentionAttention(cfg, rngs)
    self.mlp_norm = layers.RMSNorm(cfg)
    self.mlp = layers.SwiGLU(cfg, rngs)
    t = cfg.trimkv
    self.retention_gate = RetentionGate(cfg.d_model, t.gate_hidden, cfg.n_kv_heads, bias_init=t.gate_bias_init,
                                        init_std=t.gate_init_std, rngs=rngs)
    self.retention_mode = t.retention_mode

  def __call__(self, x_BxTxD, segment_ids_BxT, positions_BxT, *mlp_args, cache=None, live_BxT=None):
    if cache is None:
      return super().__call__(x_BxTxD, segment_ids_BxT, positions_BxT, *mlp_args)
    h_BxTxD = self.attn_norm(x_BxTxD)
    out_BxTxD, cache = self.attn.cached(h_BxTxD, positions_BxT, cache, live_BxT, self.retention_gate(h_BxTxD))
    x_BxTxD = x_BxTxD + out_BxTxD
    return x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD), *mlp_args), cache

  def retained(self, x_BxTxD, segment_ids_BxT, positions_BxT):
    """(x after the block, soft occupancy S [B, K, T]); the gate reads the normalised attention input (§3)."""
    h_BxTxD = self.attn_norm(x_BxTxD)
    log_beta_BxKxT = self.retention_gate(h_BxTxD)
    x_BxTxD = x_BxTxD + self.attn.retained(h_BxTxD, segment_ids_BxT, positions_BxT, log_beta_BxKxT,
                                           self.retention_mode)
    x_BxTxD = x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD))
    return x_BxTxD, soft_occupancy(log_beta_BxKxT, positions_BxT, segment_ids_BxT)

  def log_beta(self, x_BxTxD):
    """log beta [B, K, T] of this block's input residual stream (for eviction scores and diagnostics)."""
    return self.retention_gate(self.attn_norm(x_BxTxD))


class TrimKVDecoder(decoder.Decoder):
  """decoder.Decoder whose blocks carry retention gates; see the module docstring for the three forwards."""

  writes_token_scores = True  # kv_cache.check_model: its blocks write log beta as each token's cache score

  def _make_blocks(self, cfg, rngs):
    if cfg.scan_layers:
      @nnx.split_rngs(splits=cfg.n_layers)
      @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def make(rngs):
        return TrimKVBlock(cfg, rngs)
      return make(rngs)
    return nnx.List([TrimKVBlock(cfg, rngs) for _ in range(cfg.n_layers)])

  def __call__(self, tokens_BxT, *, segment_ids_BxT=None, positions_BxT=None, retention=True,
               return_occupancy=False, cache=None, live_BxT=None):
    if cache is not None or not retention:
      out = self._forward(tokens_BxT, segment_ids_BxT, positions_BxT, cache=cache, live_BxT=live_BxT)
      return (out, None) if return_occupancy and cache is None else out
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    x_BxTxD = jnp.take(self.embed[...], tokens_BxT, axis=0).astype(self.dtype)
    x_BxTxD, occupancy_LxBxKxT = self._run_retained(x_BxTxD, segment_ids_BxT, positions_BxT)
    logits_BxTxV = self._logits(x_BxTxD)
    return (logits_BxTxV, occupancy_LxBxKxT) if return_occupancy else logits_BxTxV

  def log_beta(self, tokens_BxT, positions_BxT=None):
    """log beta [L, B, K, T] over a sequence (plain forward for the residual stream; gates read it)."""
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    x_BxTxD = jnp.take(self.embed[...], tokens_BxT, axis=0).astype(self.dtype)
    blocks = self.blocks if not self.scan_layers else _unstack(self.blocks, self.n_layers)
    out = []
    for block in blocks:
      out.append(block.log_beta(x_BxTxD))
      x_BxTxD = block(x_BxTxD, None, positions_BxT)
    return jnp.stack(out)

  def _run_retained(self, x_BxTxD, segment_ids_BxT, positions_BxT):
    """The gated blocks applied functionally (split/merge) as decoder._run_blocks, with remat and scan."""
    def block_fn(graphdef):
      def apply(x_BxTxD, state):
        return nnx.merge(graphdef, state).retained(x_BxTxD, segment_ids_BxT, positions_BxT)
      if self.remat == "none":
        return apply
      return jax.checkpoint(apply, policy=decoder.REMAT_POLICIES[self.remat], prevent_cse=not self.scan_layers)

    if self.scan_layers:
      graphdef, stacked_state = nnx.split(self.blocks)
      return jax.lax.scan(block_fn(graphdef), x_BxTxD, stacked_state)
    occupancy = []
    for block in self.blocks:
      graphdef, state = nnx.split(block)
      x_BxTxD, occupancy_BxKxT = block_fn(graphdef)(x_BxTxD, state)
      occupancy.append(occupancy_BxKxT)
    return x_BxTxD, jnp.stack(occupancy)


def _unstack(stacked_blocks, n_layers):
  """Per-layer Blocks from a scanned stack (host-side use: log_beta diagnostics)."""
  graphdef, state = nnx.split(stacked_blocks)
  return [nnx.merge(graphdef, jax.tree.map(lambda x: x[i], state)) for i in range(n_layers)]


@registry.register("trimkv")
def build(cfg, rngs: nnx.Rngs) -> TrimKVDecoder:
  return TrimKVDecoder(cfg, rngs)


def gate_param_count(cfg):
  """W1, b1, W2, b per layer (§3)."""
  F, K = cfg.trimkv.gate_hidden, cfg.n_kv_heads
  return cfg.n_layers * (cfg.d_model * F + F + F * K + K)


@registry.accounting("trimkv")
def accounting(cfg, seq_len):
  """The decoder's counts plus the gates. train_flops_per_token keeps the decoder's 6 N + attention: gate-only
  training costs the student's forward + input-gradient backward (4 N, no weight gradients for frozen matmuls)
  plus the teacher's forward (2 N); the gates themselves (6 x gate params) are added."""
  counts = decoder.accounting(cfg, seq_len)
  gates = gate_param_count(cfg)
  return {**counts, "params_total": counts["params_total"] + gates, "params_retention_gate": gates,
          "train_flops_per_token": counts["train_flops_per_token"] + 6.0 * gates}


@registry.checks("trimkv")
def check(config):
  """The decoder's keys, then model.trimkv.* (each failure: "config key 'model.trimkv.x': ...")."""
  config_checks.check_decoder(config)
  t = config.model.get("trimkv")
  config_checks.require(t is not None, "model.trimkv", "missing: the trimkv model needs its gate keys "
                        "(start from configs/trimkv.py)")
  config_checks.one_of(config, "model.trimkv.gate", GATE_VARIANTS)
  config_checks.one_of(config, "model.trimkv.retention_mode", RETENTION_MODES)
  config_checks.require(isinstance(t.gate_hidden, int) and t.gate_hidden >= 1, "model.trimkv.gate_hidden",
                        f"must be a positive int (the paper's retention_gate_intermediate_size), got {t.gate_hidden!r}")
  config_checks.require(isinstance(t.gate_bias_init, (int, float)) and abs(t.gate_bias_init) < float("inf"),
                        "model.trimkv.gate_bias_init", f"must be a finite number, got {t.gate_bias_init!r}")
  config_checks.positive_finite(config, "model.trimkv.gate_init_std")
