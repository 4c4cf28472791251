"""The ahead-of-time memory check: compile the train step on abstract inputs and refuse a shape that cannot fit,
before anything is written (a run that OOMs after writing its workdir leaves a half-made run behind).

The peak per device is what XLA's buffer assignment reports: arguments + outputs - aliased (the donated state) +
temporaries + generated code. The budget is `train.memory_budget_gb` per device, or (0) the device's own memory;
on CPU, where the fake devices of one process share the host, 80% of RAM over all local devices.
"""
import os

import jax

from tessera.trainer.config_loader import ConfigError

GB = 1e9
CPU_FRACTION = 0.8


def peak_bytes(memory):
  """Peak bytes per device of a compiled executable's memory_analysis()."""
  m = memory
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
          + m.generated_code_size_in_bytes)


def budget_bytes(config, device=None):
  """(bytes per device, where the number comes from)."""
  device = device or jax.local_devices()[0]
  if config.train.get("memory_budget_gb", 0):
    return config.train.memory_budget_gb * GB, "train.memory_budget_gb"
  if device.platform == "cpu":
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    devices = jax.local_device_count()
    return CPU_FRACTION * ram / devices, f"80% of {ram / GB:.1f} GB RAM over {devices} devices"
  limit = (device.memory_stats() or {}).get("bytes_limit")
  if not limit:
    return None, "unknown"
  return limit, f"{device.device_kind} memory"


def compile_checked(train_step, abstract_state, abstract_batch, config):
  """The compiled train step; ConfigError naming train.batch_size/train.seq_len and the bytes when it cannot fit."""
  compiled = train_step.lower(abstract_state, abstract_batch).compile()
  memory = compiled.memory_analysis()
  budget, source = budget_bytes(config)
  if memory is None or budget is None:
    return compiled
  peak = peak_bytes(memory)
  if peak > budget:
    t = config.train
    raise ConfigError(
        f"config keys 'train.batch_size'={t.batch_size}, 'train.seq_len'={t.seq_len}: the train step needs "
        f"{peak:,} bytes ({peak / GB:.2f} GB; temporaries {memory.temp_size_in_bytes / GB:.2f} GB) per device but "
        f"{budget / GB:.2f} GB fit ({source}); lower them, raise train.microbatches, set model.remat, or set "
        "train.memory_budget_gb")
  return compiled
