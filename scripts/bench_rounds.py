"""Interleaved timing of jitted train steps: A/B benches (bench_ehr, bench_zett) time each variant in turn, round
after round, so a noisy shared machine slows every variant alike; the median round is what they report."""
import time

import jax
import numpy as np


def interleaved(runs, segments, steps):
  """runs: {name: {"factory", "step", "state", "batch"}} (state advances in place) -> {name: [seconds per step]}."""
  times = {name: [] for name in runs}
  for _ in range(segments):
    for name, run in runs.items():
      with run["factory"].context():
        began = time.perf_counter()
        for _ in range(steps):
          run["state"], metrics = run["step"](run["state"], run["batch"])
        jax.block_until_ready(metrics)
      times[name].append((time.perf_counter() - began) / steps)
  return times


def medians(times):
  return {name: float(np.median(t)) for name, t in times.items()}


def compiled(factory, batch):
  """A run for `interleaved`: the state at step 0 and the train step, compiled by one call on `batch`."""
  from tessera.trainer import step as step_lib
  with factory.context():
    state, step = factory.init(0), step_lib.make_train_step(factory)
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  return {"factory": factory, "step": step, "state": state, "batch": batch}
