"""STEM's row step, the step variant behind `optim.stem_update=sparse_rows` and `model.stem.offload` (stem.md §8).

Each step gathers the batch's unique rows of every table, differentiates w.r.t. those [U, F] rows (no dense [V, F]
gradient or update exists), then the sparse-row AdamW reads and writes only those rows of the tables and their
moments. ROWS keeps the tables in device memory; OFFLOAD keeps tables and moments in `pinned_host` memory (a
host-memory parameter cannot take a cotangent, which is why the gradient is taken w.r.t. gathered device rows).
One microbatch (tessera.models.stem_method picks the standard step otherwise, and refuses offload).
"""
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.experimental.compute_on import compute_on

from tessera.models import registry
from tessera.models import stem


def _is_table(path):
  return str(getattr(path[-1], "key", path[-1])) == stem.TABLE_PARAM


def _host_tables(config, shardings):
  return jax.tree_util.tree_map_with_path(
      lambda path, s: s.with_memory_kind("pinned_host") if _is_table(path) else s, shardings)


def _rows_graphdef(ctx):
  """The model's graph with every STEM layer reading a table of batch rows (StemFFN.batch_rows)."""
  with ctx.context():
    abstract_model = nnx.eval_shape(lambda: registry.get(ctx.config.model.name)(ctx.config.model, nnx.Rngs(0)))
  for _, module in nnx.iter_graph(abstract_model):
    if isinstance(module, stem.StemFFN):
      module.batch_rows = True
  return ctx.graphdef_of(abstract_model)


def _host_sum_squares(table_VxF):
  """sum(table**2) computed where the host table lives; only the scalar comes to the device."""
  @compute_on("device_host")
  def sum_squares(t):
    return jnp.sum(jnp.square(t.astype(jnp.float32)))
  return jax.device_put(sum_squares(table_VxF), jax.memory.Space.Device)


def _make(ctx):
  rows_graphdef = _rows_graphdef(ctx)
  V = ctx.config.model.vocab_size

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    params = state["params"]
    ids_U = stem.unique_ids(batch["inputs"], V)
    is_table = jax.tree_util.tree_map_with_path(lambda path, _: _is_table(path), params)
    rows = jax.tree.map(lambda p, t: stem.gather_rows(p, ids_U) if t else p, params, is_table)

    def loss_of(rows):
      model = ctx.model(rows, state["frozen"], state["model_state"], graphdef=rows_graphdef)
      return ctx.objective.loss_fn(model, batch, rng)

    (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(rows)
    updates, opt_state = ctx.tx.update(grads, state["opt_state"], params, stem_row_ids=ids_U,
                                       stem_grads_are_rows=True)
    new_params = jax.tree.map(
        lambda p, r, u, t: stem.scatter_rows(p, ids_U, r + u) if t else optax.apply_updates(p, u),
        params, rows, updates, is_table)
    model_state, rule_metrics = state["model_state"], {}
    if ctx.objective.has_after_update:  # in device memory only (offload refuses rules that rewrite whole tables)
      model = ctx.model(new_params, state["frozen"], model_state, master=True)
      rule_metrics = ctx.objective.after_update(model, state["step"])
      new_params, _, model_state = ctx.variables(model)
    squares = [_host_sum_squares(p) if t else jnp.sum(jnp.square(p.astype(jnp.float32)))
               for p, t in zip(jax.tree.leaves(new_params), jax.tree.leaves(is_table))]
    metrics = {"loss": loss, "lr": ctx.lr_schedule(state["step"]), "grad_norm": optax.tree.norm(grads),
               "param_norm": jnp.sqrt(sum(squares)), **ctx.group_norms(grads),
               **{k: v for k, v in aux.items() if k != "loss"}, **rule_metrics}
    new_state = {**state, "step": state["step"] + 1, "params": new_params, "model_state": model_state,
                 "opt_state": opt_state}
    return new_state, metrics

  return train_step


ROWS = registry.StepVariant(make=_make)
OFFLOAD = registry.StepVariant(make=_make, param_shardings=_host_tables)
