"""Generalized-Gaussian priors, BackSlash, DeepShape and RF8 (../shared/specs/gg_prior.md): the keys they read.

  scripts/train --config configs/gg.py --config.model.gg.shape=1.0            # lm.py:small with model.init=gg
  scripts/train --config configs/lm.py:small --config.regularizer.backslash.enabled=True

`add_keys(c)` puts these keys on any LM config (lm.py and stem.py call it), so every LM accepts them:
  model.gg.{shape, xi, fan_mode}  with model.init="gg": every >= 2-D weight ~ GG(0, alpha, shape), variance xi/n,
                                  n = a kernel's output size or V of an embedding ("reference"), or fan-in;
  model.weight_format             how the checkpoint stores >= 2-D weights: "float", or the 8-bit codes
                                  "rf8" | "e4m3" | "e5m2" that scripts/quantize writes (eval/sample only);
  model.fake_quant                "none" or a format whose quantise-dequantise runs in the forward (QAT);
  regularizer.backslash.*         a rate step after every optimizer update while step < end_fraction x
                                  train.steps; lam 0 = the project default 2e3 N / 1.24e8 (tessera.losses.backslash);
                                  nu 0 = re-estimate nu-hat every step, > 0 forces it (1.0: the L1 proximal baseline);
  regularizer.weight_stats        log nu-hat, entropy / Exp-Golomb bits per param and histograms at every eval.
"""
import ml_collections


def add_keys(c):
  c.model.gg = ml_collections.ConfigDict(dict(shape=1.0, xi=2.0, fan_mode="reference"))
  c.model.weight_format = "float"
  c.model.fake_quant = "none"
  c.regularizer = ml_collections.ConfigDict(dict(weight_stats=False))
  c.regularizer.backslash = ml_collections.ConfigDict(dict(
      enabled=False, lam=0.0, clip=1.0, pool="all", end_fraction=0.75, nu=0.0))
  return c


def get_config(arg="small"):
  from tessera.configs import lm  # lm.py adds these keys to every variant
  c = lm.build(arg)
  c.model.init = "gg"
  c.lock()
  return c
