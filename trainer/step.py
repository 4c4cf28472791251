"""The one jitted train step (microbatch accumulation, optimizer update, the objective's after-update rules,
metrics) and the eval step. A method whose step differs registers a StepVariant (tessera.models.registry)."""
import jax
import jax.numpy as jnp
import optax

from tessera.trainer import mesh as mesh_lib


def _split_microbatches(batch, m):
  """[B, ...] -> [m, B/m, ...] taking rows m apart, so every microbatch stays spread over all batch shards."""
  def split(x):
    return x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def _accumulated(grad_fn, params, batch, rng, m):
  """(loss, aux), grads over m microbatches, token-weighted (equals one big batch), accumulated in fp32."""
  microbatches = _split_microbatches(batch, m)

  def accumulate(total, xs):
    i, mb = xs
    (loss, aux), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
    weight = aux.get("tokens", jnp.float32(1.0)).astype(jnp.float32)
    weighted = jax.tree.map(lambda x: weight * x.astype(jnp.float32), (loss, grads))
    return jax.tree.map(jnp.add, total, (weighted, aux, weight)), None

  (_, aux_shapes), grad_shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], microbatches), rng)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32),
                       ((jax.ShapeDtypeStruct((), jnp.float32), grad_shapes), aux_shapes,
                        jax.ShapeDtypeStruct((), jnp.float32)))
  ((loss, grads), aux, weight), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(m), microbatches))
  loss, grads = jax.tree.map(lambda x: x / jnp.maximum(weight, 1e-9), (loss, grads))
  aux = jax.tree.map(lambda x: x / m, aux)
  return (loss, aux), jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)


def standard_step(ctx):
  """state, batch -> state, metrics: gradients w.r.t. state["params"] only (frozen and model state are inputs)."""
  m = ctx.config.train.microbatches

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    frozen, model_state = state["frozen"], state["model_state"]

    def loss_of(params, batch, rng):
      return ctx.objective.loss_fn(ctx.model(params, frozen, model_state), batch, rng)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)
    params = state["params"]
    (loss, aux), grads = grad_fn(params, batch, rng) if m == 1 else _accumulated(grad_fn, params, batch, rng, m)
    updates, opt_state = ctx.tx.update(grads, state["opt_state"], params, **ctx.optimizer_args(batch))
    params = optax.apply_updates(params, updates)
    rule_metrics = {}
    if ctx.objective.has_after_update:
      model = ctx.model(params, frozen, model_state, master=True)
      rule_metrics = ctx.objective.after_update(model, state["step"])
      params, _, model_state = ctx.variables(model)  # frozen params never change
    metrics = {"loss": loss, "lr": ctx.lr_schedule(state["step"]), "grad_norm": optax.tree.norm(grads),
               "param_norm": optax.tree.norm(params), **ctx.group_norms(grads),
               **{k: v for k, v in aux.items() if k != "loss"}, **rule_metrics}
    new_state = {**state, "step": state["step"] + 1, "params": params, "model_state": model_state,
                 "opt_state": opt_state}
    return new_state, metrics

  return train_step


def make_train_step(ctx):
  """The jitted step (the method's variant when it registers one), explicit shardings, state donated."""
  body = (ctx.variant.make if ctx.variant is not None else standard_step)(ctx)

  def train_step(state, batch):
    new_state, metrics = body(state, batch)
    return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

  return jax.jit(train_step, in_shardings=(ctx.shardings, mesh_lib.batch_sharding(ctx.mesh)),
                 out_shardings=(ctx.shardings, mesh_lib.replicated(ctx.mesh)), donate_argnums=0)


def make_eval_step(ctx):
  """variables, batch -> metrics; the loss with a fixed rng (eval is deterministic). `variables`: the state's
  {"params", "frozen", "model_state"}."""

  def eval_step(variables, batch):
    model = ctx.model(variables["params"], variables["frozen"], variables["model_state"])
    loss, aux = ctx.objective.loss_fn(model, batch, jax.random.key(0))
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), {**aux, "loss": loss})

  shardings = {k: ctx.shardings[k] for k in ("params", "frozen", "model_state")}
  return jax.jit(eval_step, in_shardings=(shardings, mesh_lib.batch_sharding(ctx.mesh)),
                 out_shardings=mesh_lib.replicated(ctx.mesh))
