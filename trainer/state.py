"""The train state as a plain dict of arrays, created directly in its shardings.

state = {"step": int32[], "params": trained params, "frozen": params that `train.trainable` (or a frozen optimizer
group) leaves out, "model_state": the model's ModelState variables (EMA copies, ...), "opt_state": optax state of
"params" only, "rng": uint32 raw key data}. params/frozen/model_state are pure nested dicts whose leaves carry
logical axis names (tessera.models); the config's rules, then the model's registered ones, map them to mesh axes.
Only "params" is differentiated: frozen weights cost no weight-gradient matmuls and no optimizer memory.
"""
import contextlib
import re

import jax
import jax.numpy as jnp
from flax import nnx

from tessera import models  # noqa: F401  (registers the zoo)
from tessera.models import quantized
from tessera.models import registry as model_registry
from tessera.models.layers import ModelState
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import optim
from tessera.trainer import zoo
from tessera.trainer.config_loader import ConfigError

TREES = ("params", "frozen", "model_state")  # the model's variables in the state


def split_tree(tree, mask):
  """(leaves where mask is True, the others) as two pure nested dicts (empty branches dropped)."""
  def part(node, mask_node, keep):
    if isinstance(node, dict):
      out = {k: part(v, mask_node[k], keep) for k, v in node.items()}
      return {k: v for k, v in out.items() if v is not None and not (isinstance(v, dict) and not v)} or None
    return node if mask_node == keep else None
  return part(tree, mask, True) or {}, part(tree, mask, False) or {}


def merge_trees(a, b):
  """The union of two pure nested dicts with disjoint leaves."""
  if not isinstance(b, dict) or not b:
    return a
  if not isinstance(a, dict) or not a:
    return b
  out = dict(a)
  for k, v in b.items():
    out[k] = merge_trees(out[k], v) if k in out else v
  return out


def trainable_mask(config, params):
  """True where a param trains: its path matches `train.trainable` and its optimizer group is not frozen."""
  pattern = re.compile(config.train.trainable)
  specs = optim.group_specs(config.optim)

  def trains(path, _):
    name = optim.path_str(path)
    return bool(pattern.search(name)) and not specs[optim.group_of(config.optim, name)]["frozen"]
  return jax.tree_util.tree_map_with_path(trains, params)


class StateFactory:
  """Knows the model's graph, the shardings and the optimizer; makes fresh or abstract train states.

  Also the context a method's step variant gets (tessera.models.registry.StepVariant): config, model(), tx,
  lr_schedule, group_norms(), objective, optimizer_args().
  """

  def __init__(self, config, mesh, objective=None):
    self.config, self.mesh = config, mesh
    zoo.import_plugins(config)
    self.objective = objective if objective is not None else zoo.objective(config)
    self.rules = mesh_lib.logical_rules(config) + tuple(
        r for r in model_registry.SHARDING_RULES.get(config.model.name, ())
        if r[0] not in {name for name, _ in mesh_lib.logical_rules(config)})
    try:
      build = model_registry.get(config.model.name)
    except KeyError as e:
      raise ConfigError(e.args[0]) from None
    self._build = lambda rngs: build(config.model, rngs)
    with self.context():
      try:
        abstract_model = nnx.eval_shape(lambda: self._build(nnx.Rngs(0)))
      except ValueError as e:  # a builder's own key check
        raise ConfigError(str(e).splitlines()[0]) from None
      self.graphdef, abstract_all, abstract_state, rest = nnx.split(abstract_model, nnx.Param, ModelState, ...)
      all_shardings = nnx.to_pure_dict(nnx.get_named_sharding(abstract_all, mesh))
      self.model_state_shardings = nnx.to_pure_dict(nnx.get_named_sharding(abstract_state, mesh))
      if jax.tree.leaves(rest):  # other non-parameter module state (rare): needs real values
        _, _, _, rest = nnx.split(self._build(nnx.Rngs(0)), nnx.Param, ModelState, ...)
    self._rest = rest
    select = model_registry.STEP_VARIANTS.get(config.model.name)
    self.variant = select(config) if select else None
    if self.variant is not None:
      all_shardings = self.variant.param_shardings(config, all_shardings)
    abstract_all = nnx.to_pure_dict(abstract_all)
    self.abstract_model_state = nnx.to_pure_dict(abstract_state)
    if config.model.get("weight_format", quantized.FLOAT) != quantized.FLOAT:  # scripts/quantize output: eval/sample
      abstract_all, all_shardings = quantized.stored_abstract(abstract_all, all_shardings, mesh_lib.replicated(mesh))
      self.mask = jax.tree.map(lambda _: True, abstract_all)
    else:
      self.mask = trainable_mask(config, abstract_all)
    self.abstract_params, self.abstract_frozen = split_tree(abstract_all, self.mask)
    if not jax.tree.leaves(self.abstract_params):
      raise ConfigError(f"config key 'train.trainable': {config.train.trainable!r} leaves no parameter to train")
    self.param_shardings, self.frozen_shardings = split_tree(all_shardings, self.mask)
    try:
      self.tx, self.lr_schedule, self.labels, self.updates = optim.build(config, self.abstract_params)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    self.group_names = sorted(self.updates)
    abstract_opt = jax.eval_shape(self.tx.init, self.abstract_params)
    self.shardings = {
        "step": mesh_lib.replicated(mesh),
        "params": self.param_shardings,
        "frozen": self.frozen_shardings,
        "model_state": self.model_state_shardings,
        "opt_state": self._opt_shardings(abstract_opt),
        "rng": mesh_lib.replicated(mesh),
    }

  @contextlib.contextmanager
  def context(self):
    """Mesh + logical rules: what building or running the model needs."""
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
      yield

  def _opt_shardings(self, abstract_opt):
    """Optimizer leaves that mirror a param (same path suffix and shape) take its sharding; others replicate."""
    by_path = {optim.path_keys(p): leaf.shape
               for p, leaf in jax.tree_util.tree_flatten_with_path(self.abstract_params)[0]}
    flat_sh = {optim.path_keys(p): s for p, s in jax.tree_util.tree_flatten_with_path(self.param_shardings)[0]}

    def pick(path, leaf):
      keys = optim.path_keys(path)
      for start in range(len(keys)):
        suffix = keys[start:]
        if by_path.get(suffix) == leaf.shape:
          return flat_sh[suffix]
      return mesh_lib.replicated(self.mesh)

    return jax.tree_util.tree_map_with_path(pick, abstract_opt)

  def graphdef_of(self, module):
    """The graph of `module` split the way the state is (for a step variant's own forward)."""
    return nnx.split(module, nnx.Param, ModelState, ...)[0]

  def all_params(self, params, frozen):
    return merge_trees(params, frozen)

  def split_params(self, all_params):
    """A whole params tree -> (trained, frozen) as this run splits it."""
    return split_tree(all_params, self.mask)

  def model(self, params, frozen=None, model_state=None, graphdef=None, master=False):
    """The NNX module over pure dicts; cheap, used inside jitted functions. 8-bit stored weights are decoded and
    `model.fake_quant` applied here (tessera.models.quantized) unless `master` (the weights as stored: what
    after-update rules rewrite)."""
    all_params = merge_trees(params, frozen or {})
    if not master:
      all_params = quantized.float_params(self.config.model, all_params)
    model_state = self.abstract_model_state if model_state is None else model_state
    return nnx.merge(graphdef or self.graphdef, nnx.State(all_params), nnx.State(model_state), self._rest)

  def variables(self, model):
    """(params, frozen, model_state) pure dicts read back from a model (after an in-place update)."""
    params, frozen = self.split_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return params, frozen, nnx.to_pure_dict(nnx.state(model, ModelState))

  def group_norms(self, grads):
    if len(self.group_names) == 1:
      return {}
    norms = optim.group_grad_norms(grads, self.labels, self.group_names)
    return {f"grad_norm/{k}": v for k, v in norms.items()}

  def optimizer_args(self, batch):
    return optim.extra_args(self.config, self.updates, batch)

  def init(self, seed):
    """A fresh state, created sharded by a jitted initializer."""

    def init_variables(key):
      model = self._build(nnx.Rngs(params=key))
      params, frozen = self.split_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
      return params, frozen, nnx.to_pure_dict(nnx.state(model, ModelState))

    key = jax.random.key(seed)
    shardings = tuple(self.shardings[k] for k in TREES)
    with self.context():
      params, frozen, model_state = jax.jit(init_variables, out_shardings=shardings)(key)
    return self.from_variables(params, frozen, model_state, jax.random.fold_in(key, 1))

  def from_variables(self, params, frozen, model_state, key):
    """Step 0 state around given variables (fresh optimizer): for init.workdir and fresh runs."""
    opt_state = jax.jit(self.tx.init, out_shardings=self.shardings["opt_state"])(params)
    return {
        "step": jax.device_put(jnp.zeros((), jnp.int32), self.shardings["step"]),
        "params": params,
        "frozen": frozen,
        "model_state": model_state,
        "opt_state": opt_state,
        "rng": jax.device_put(jax.random.key_data(key), self.shardings["rng"]),
    }

  def abstract_state(self):
    """ShapeDtypeStructs with target shardings: the restore target on this mesh."""
    abstract = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": self.abstract_params,
        "frozen": self.abstract_frozen,
        "model_state": self.abstract_model_state,
        "opt_state": jax.eval_shape(self.tx.init, self.abstract_params),
        "rng": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
    }
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.shardings)

  def abstract_variables(self):
    """{"params", "frozen", "model_state"} of abstract_state(): what eval, sample and init restore."""
    abstract = self.abstract_state()
    return {k: abstract[k] for k in TREES}
