"""The train state as a plain dict of arrays, created directly in its shardings.

state = {"step": int32[], "params": pure nested dict, "opt_state": optax state, "rng": uint32 raw key data}.
Params carry logical axis names (tessera.models); the config's rules map them to mesh axes.
"""
import contextlib

import jax
import jax.numpy as jnp
from flax import nnx

from tessera import models  # noqa: F401  (registers the zoo)
from tessera.models import quantized
from tessera.models import registry as model_registry
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import optim
from tessera.trainer.config_loader import ConfigError


class StateFactory:
  """Knows the model's graph, the shardings and the optimizer; makes fresh or abstract train states."""

  def __init__(self, config, mesh):
    self.config, self.mesh = config, mesh
    self.rules = mesh_lib.logical_rules(config)
    try:
      build = model_registry.get(config.model.name)
    except KeyError as e:
      raise ConfigError(e.args[0]) from None
    self._build = lambda rngs: build(config.model, rngs)
    with self.context():
      abstract_model = nnx.eval_shape(lambda: self._build(nnx.Rngs(0)))
      self.graphdef, abstract_params, rest = nnx.split(abstract_model, nnx.Param, ...)
      self.param_shardings = nnx.to_pure_dict(nnx.get_named_sharding(abstract_params, mesh))
      self.offload = bool(config.model.get("stem", {}).get("offload", False))
      if self.offload:  # STEM tables (and, by _opt_shardings, their Adam moments) live in pinned host memory
        self.param_shardings = jax.tree_util.tree_map_with_path(
            lambda path, s: s.with_memory_kind("pinned_host") if optim.is_stem_table(path) else s,
            self.param_shardings)
        self.rows_graphdef = _batch_rows_graphdef(abstract_model)
      if jax.tree.leaves(rest):  # non-parameter module state (rare): needs real values
        _, _, rest = nnx.split(self._build(nnx.Rngs(0)), nnx.Param, ...)
    self._rest = rest
    self.abstract_params = nnx.to_pure_dict(abstract_params)
    self.tx, self.lr_schedule, self.labels = optim.build(config.optim, config.train.steps, self.abstract_params)
    self.group_names = list(optim.group_specs(config.optim))
    abstract_opt = jax.eval_shape(self.tx.init, self.abstract_params)
    if config.model.get("weight_format", quantized.FLOAT) != quantized.FLOAT:  # scripts/quantize output: eval/sample
      self.abstract_params, self.param_shardings = quantized.stored_abstract(
          self.abstract_params, self.param_shardings, mesh_lib.replicated(mesh))
    self.shardings = {
        "step": mesh_lib.replicated(mesh),
        "params": self.param_shardings,
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
    by_path = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(self.abstract_params)[0]:
      by_path[optim.path_keys(path)] = leaf.shape
    flat_sh = {optim.path_keys(p): s for p, s in jax.tree_util.tree_flatten_with_path(self.param_shardings)[0]}

    def pick(path, leaf):
      keys = optim.path_keys(path)
      for start in range(len(keys)):
        suffix = keys[start:]
        if by_path.get(suffix) == leaf.shape:
          return flat_sh[suffix]
      return mesh_lib.replicated(self.mesh)

    return jax.tree_util.tree_map_with_path(pick, abstract_opt)

  def model(self, params, batch_rows=False):
    """The NNX module over `params` (a pure dict); cheap, used inside jitted functions. 8-bit stored weights are
    decoded and `model.fake_quant` applied here (tessera.models.quantized). `batch_rows` (offload train step): the
    STEM tables in `params` are the batch's unique rows (tessera.models.stem.lookup)."""
    graphdef = self.rows_graphdef if batch_rows else self.graphdef
    return nnx.merge(graphdef, nnx.State(quantized.float_params(self.config.model, params)), self._rest)

  def init(self, seed):
    """A fresh state, created sharded by a jitted initializer."""

    def init_params(key):
      model = self._build(nnx.Rngs(params=key))
      return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    key = jax.random.key(seed)
    with self.context():
      params = jax.jit(init_params, out_shardings=self.param_shardings)(key)
    return self.from_params(params, jax.random.fold_in(key, 1))

  def from_params(self, params, key):
    """Step 0 state around given params (fresh optimizer): for --init-from and fresh runs."""
    opt_state = jax.jit(self.tx.init, out_shardings=self.shardings["opt_state"])(params)
    return {
        "step": jax.device_put(jnp.zeros((), jnp.int32), self.shardings["step"]),
        "params": params,
        "opt_state": opt_state,
        "rng": jax.device_put(jax.random.key_data(key), self.shardings["rng"]),
    }

  def abstract_state(self):
    """ShapeDtypeStructs with target shardings: the restore target on this mesh."""
    abstract = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": self.abstract_params,
        "opt_state": jax.eval_shape(self.tx.init, self.abstract_params),
        "rng": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
    }
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.shardings)

  def abstract_params_sharded(self):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_params, self.param_shardings)


def _batch_rows_graphdef(abstract_model):
  """The graph of `abstract_model` (which it flips) with every STEM layer reading a table of batch rows
  (StemFFN.batch_rows): the offload train step's forward."""
  from tessera.models import stem
  for _, module in nnx.iter_graph(abstract_model):
    if isinstance(module, stem.StemFFN):
      module.batch_rows = True
  graphdef, _, _ = nnx.split(abstract_model, nnx.Param, ...)
  return graphdef
