"""Partial init from another run (`init.workdir`, `init.map`, `init.strict`): a trained model under new modules.

Every leaf of the source's latest params and frozen params is renamed by the first `init.map` rule whose regex
matches its '/'-joined path (re.sub); with no rules every path maps to itself, with rules a path none matches is
not loaded. A renamed path that names a param or frozen leaf of
this model with the same shape takes the source's value; the rest keep their fresh init. A matched path with
another shape, or no match at all, is a ConfigError (exit 2, nothing written); with `init.strict` every leaf of
this model must be loaded. The plan is made in setup (reads only); `<workdir>/init.json` records it.
"""
import re

import jax
import orbax.checkpoint as ocp

from tessera.trainer import checkpoint as ckpt_lib
from tessera.trainer.config_loader import ConfigError

TREES = ("params", "frozen")


def _leaves(tree, prefix=()):
  """{'/'-joined path: (key tuple, leaf)} of a nested dict."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_leaves(value, prefix + (key,)))
    else:
      out["/".join(map(str, prefix + (key,)))] = (prefix + (key,), value)
  return out


def _set(tree, keys, value):
  node = tree
  for key in keys[:-1]:
    node = node.setdefault(key, {})
  node[keys[-1]] = value


def _rename(rules, path):
  if not rules:
    return path
  for pattern, target in rules:
    if pattern.search(path):
      return pattern.sub(target, path, count=1)
  return None


class Plan:
  """Which source leaf loads into which target leaf; `load()` restores them (target shardings) into fresh trees."""

  def __init__(self, config, factory):
    init = config.init
    self.source = ckpt_lib.absolute(init.workdir)
    if not ckpt_lib.directory(self.source).exists():
      raise ConfigError(f"config key 'init.workdir': {self.source} holds no checkpoints/ (not a tessera run)")
    self.checkpointer = ckpt_lib.Checkpointer(self.source, config.checkpoint)
    self.step = self.checkpointer.latest_step()
    if self.step is None:
      raise ConfigError(f"config key 'init.workdir': {self.source}/checkpoints has no committed checkpoint")
    rules = [(re.compile(rule.partition("=")[0]), rule.partition("=")[2]) for rule in init.map]
    saved = self.checkpointer.saved_shapes(self.step)
    targets, abstract = {}, factory.abstract_variables()
    for tree in TREES:
      for path, (keys, leaf) in _leaves(abstract[tree]).items():
        targets[path] = (tree, keys, leaf)
    self.loads, used = {}, set()  # target path -> (source tree, source keys, target tree, target keys, shape)
    for tree in TREES:
      for path, (keys, meta) in _leaves(saved.get(tree) or {}).items():
        target = _rename(rules, path)
        if target not in targets:
          continue
        target_tree, target_keys, leaf = targets[target]
        shape = tuple(getattr(meta, "shape", ()))
        if shape != tuple(leaf.shape):
          raise ConfigError(f"config key 'init.map': {self.source} {path} has shape {shape} but {target} here is "
                            f"{tuple(leaf.shape)}")
        self.loads[target] = (tree, keys, target_tree, target_keys, leaf)
        used.add(path)
    self.fresh = sorted(set(targets) - set(self.loads))
    self.unused = sorted(p for tree in TREES for p in _leaves(saved.get(tree) or {}) if p not in used)
    if not self.loads:
      raise ConfigError(f"config key 'init.workdir': no parameter of {self.source} matches this model's paths "
                        f"(init.map {list(init.map)}); its params look like {self.unused[:3]}")
    if init.strict and self.fresh:
      raise ConfigError(f"config key 'init.strict': {self.fresh[0]} (and {len(self.fresh) - 1} more) of this model "
                        f"are not in {self.source}")

  def load(self, params, frozen):
    """(params, frozen) with every planned leaf replaced by the source's value."""
    item = {}
    for tree, keys, target_tree, target_keys, leaf in self.loads.values():
      _set(item, (tree,) + tuple(keys), jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding))
    restored = self.checkpointer.manager.restore(self.step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True)))
    restored = restored[ckpt_lib.STATE]
    out = {"params": params, "frozen": frozen}
    for tree, keys, target_tree, target_keys, _ in self.loads.values():
      value = restored[tree]
      for key in keys:
        value = value[key]
      node = out[target_tree]
      for key in target_keys[:-1]:
        node = node[key]
      node[target_keys[-1]] = value
    self.checkpointer.close()
    return out["params"], out["frozen"]

  def report(self):
    return {"source": str(self.source), "step": self.step,
            "loaded": {target: "/".join(map(str, load[1])) for target, load in sorted(self.loads.items())},
            "fresh": self.fresh, "unused_source": self.unused}

