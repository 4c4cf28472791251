"""The one jitted train step (microbatch accumulation, optimizer update, metrics) and the eval step."""
import jax
import jax.numpy as jnp
import optax
from jax.experimental.compute_on import compute_on

from tessera.models import stem
from tessera.trainer import mesh as mesh_lib
from tessera.trainer import optim
from tessera.trainer import regularizers


def _split_microbatches(batch, m):
  """[B, ...] -> [m, B/m, ...] taking rows m apart, so every microbatch stays spread over all batch shards."""
  def split(x):
    return x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def make_train_step(factory, loss_fn):
  """state, batch -> state, metrics (all scalars, fp32). jit-compiled with explicit shardings, state donated."""
  config = factory.config
  m = config.train.microbatches

  def loss_of(params, batch, rng):
    return loss_fn(factory.model(params), batch, rng)

  grad_fn = jax.value_and_grad(loss_of, has_aux=True)

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    params = state["params"]
    if factory.offload:
      return _offload_train_step(factory, loss_fn, state, batch, rng)
    if m == 1:
      (loss, aux), grads = grad_fn(params, batch, rng)
    else:
      microbatches = _split_microbatches(batch, m)

      def accumulate(total, xs):
        i, mb = xs
        (loss, aux), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
        weight = aux.get("tokens", jnp.float32(1.0)).astype(jnp.float32)  # token-weighted: equals one big batch
        weighted = jax.tree.map(lambda x: weight * x.astype(jnp.float32), (loss, grads))
        return jax.tree.map(jnp.add, total, (weighted, aux, weight)), None

      (_, aux_shapes), grad_shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], microbatches), rng)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32),
                           ((jax.ShapeDtypeStruct((), jnp.float32), grad_shapes), aux_shapes,
                            jax.ShapeDtypeStruct((), jnp.float32)))
      ((loss, grads), aux, weight), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(m), microbatches))
      loss, grads = jax.tree.map(lambda x: x / jnp.maximum(weight, 1e-9), (loss, grads))  # fp32 accumulation
      aux = jax.tree.map(lambda x: x / m, aux)
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)

    updates, opt_state = factory.tx.update(grads, state["opt_state"], params, **_optimizer_args(config, batch))
    new_params = optax.apply_updates(params, updates)
    new_params, regularizer_metrics = regularizers.after_update(factory, new_params, state["step"])
    metrics = {
        "loss": loss,
        "lr": factory.lr_schedule(state["step"]),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(new_params),
        **{f"grad_norm/{k}": v for k, v in _group_norms(factory, grads).items()},
        **{k: v for k, v in aux.items() if k != "loss"},
        **regularizer_metrics,
    }
    new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state, "rng": state["rng"]}
    return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

  batch_sharding = mesh_lib.batch_sharding(factory.mesh)
  return jax.jit(train_step, in_shardings=(factory.shardings, batch_sharding),
                 out_shardings=(factory.shardings, mesh_lib.replicated(factory.mesh)), donate_argnums=0)


def _offload_train_step(factory, loss_fn, state, batch, rng):
  """Host-offloaded STEM tables (model.stem.offload): gather the batch's unique rows to the device, differentiate
  w.r.t. those device rows (a host-memory parameter cannot take a cotangent), then the sparse-row AdamW reads and
  writes only those rows of the host tables and host moments. One microbatch, sparse_rows (trainer.validate)."""
  params, V = state["params"], factory.config.model.vocab_size
  ids_U = stem.unique_ids(batch["inputs"], V)
  is_table = jax.tree_util.tree_map_with_path(lambda path, _: optim.is_stem_table(path), params)
  rows = jax.tree.map(lambda p, t: stem.gather_rows(p, ids_U) if t else p, params, is_table)

  def loss_of(rows, batch, rng):
    return loss_fn(factory.model(rows, batch_rows=True), batch, rng)

  (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(rows, batch, rng)
  updates, opt_state = factory.tx.update(grads, state["opt_state"], params, stem_row_ids=ids_U,
                                         stem_grads_are_rows=True)
  new_params = jax.tree.map(
      lambda p, r, u, t: stem.scatter_rows(p, ids_U, r + u) if t else optax.apply_updates(p, u),
      params, rows, updates, is_table)
  metrics = {
      "loss": loss,
      "lr": factory.lr_schedule(state["step"]),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": jnp.sqrt(sum(_host_sum_squares(p) if t else jnp.sum(jnp.square(p.astype(jnp.float32)))
                                 for p, t in zip(jax.tree.leaves(new_params), jax.tree.leaves(is_table)))),
      **{f"grad_norm/{k}": v for k, v in _group_norms(factory, grads).items()},
      **{k: v for k, v in aux.items() if k != "loss"},
  }
  new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state, "rng": state["rng"]}
  return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)


def _host_sum_squares(table_VxF):
  """sum(table**2) computed where the host table lives; only the scalar comes to the device."""
  @compute_on("device_host")
  def sum_squares(t):
    return jnp.sum(jnp.square(t.astype(jnp.float32)))
  return jax.device_put(sum_squares(table_VxF), jax.memory.Space.Device)


def _optimizer_args(config, batch):
  """Extra optimizer inputs: the batch's unique ids (padded with V) for the sparse-row STEM update."""
  if config.optim.get("stem_update", "dense") != "sparse_rows":
    return {}
  V = config.model.vocab_size
  ids = batch["inputs"]
  return {"stem_row_ids": jnp.unique(ids, size=min(V, ids.size), fill_value=V)}


def _group_norms(factory, grads):
  if len(factory.group_names) == 1:
    return {}
  return optim.group_grad_norms(grads, factory.labels, factory.group_names)


def make_eval_step(factory, loss_fn):
  """params, batch -> metrics; the loss with a fixed rng (eval is deterministic)."""

  def eval_step(params, batch):
    loss, aux = loss_fn(factory.model(params), batch, jax.random.key(0))
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), {**aux, "loss": loss})

  return jax.jit(eval_step, in_shardings=(factory.param_shardings, mesh_lib.batch_sharding(factory.mesh)),
                 out_shardings=mesh_lib.replicated(factory.mesh))
