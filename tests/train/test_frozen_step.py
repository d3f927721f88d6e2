"""Issue 18: frozen groups cost nothing in the train step.

With ``frozen_backbone`` / ``hypernet_only`` the step differentiates only the
trainable parameters (no backbone gradient exists, fewer matmuls in the program),
and its parameters, optimizer state and metrics equal those of differentiating
everything and letting ``set_to_zero`` drop the frozen part (the old step).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyper_tasks.train import optimizers, step_fn
from hyper_tasks.train.train_state import TrainState
from tests.train import train_testlib as lib


@pytest.fixture(scope="module")
def setup():
  model = lib.tiny_hint(dropout_rate=0.0)
  batch = next(lib.synthetic_batches(batch_size=2))
  shapes = {k: v.shape for k, v in batch.items()}
  params = jax.jit(lambda k: model.get_initial_variables(
      k, shapes, boxed=False)["params"])(jax.random.key(0))
  return model, batch, params


def _old_step(model, optimizer, state, batch):
  """The step before issue 18: gradients of every parameter."""
  rng = jax.random.fold_in(state.rng, state.step)
  (_, m), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
      state.params, batch, rng)
  updates, opt = optimizer.update(grads, state.opt_state, state.params)
  return jax.tree.map(lambda p, u: p + u, state.params, updates), opt, m["loss"]


def _dots(fn, *args):
  text = str(jax.make_jaxpr(fn)(*args))
  return text.count("dot_general")


def _state(optimizer, params):
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                    opt_state=optimizer.init(params), rng=jax.random.key(1))


def test_hypernet_only_differentiates_the_hypernetwork_only(setup):
  model, batch, params = setup
  optimizer = optimizers.hypernet_only(hypernet_lr=1e-2)
  step = step_fn.make_train_step(model, optimizer, optimizer.group_of(params))
  grads = jax.eval_shape(step.trainable_grads, params, batch, jax.random.key(2))[0]
  assert grads and all(k.startswith("hypernet/") for k in grads), sorted(grads)


@pytest.mark.parametrize("make_opt", [optimizers.frozen_backbone])
def test_frozen_groups_get_no_gradient_and_the_same_update(setup, make_opt):
  model, batch, params = setup
  optimizer = make_opt(hypernet_lr=1e-2)
  path_group = optimizer.group_of(params)
  state = _state(optimizer, params)
  step = step_fn.make_train_step(model, optimizer, path_group)

  grads = jax.eval_shape(step.trainable_grads, params, batch, jax.random.key(2))[0]
  assert grads and all(k.startswith("hypernet/") for k in grads), sorted(grads)

  new_state, metrics = jax.jit(step)(state, batch)
  old_params, old_opt, old_loss = jax.jit(
      lambda s, b: _old_step(model, optimizer, s, b))(state, batch)
  assert float(metrics["finite"]) == 1.0
  np.testing.assert_allclose(float(metrics["loss"]), float(old_loss), rtol=1e-6)
  for path, group in path_group.items():
    new = new_state.params
    for k in path.split("/"):
      new = new[k]
    old = old_params
    for k in path.split("/"):
      old = old[k]
    ref = params
    for k in path.split("/"):
      ref = ref[k]
    if group == "hypernet":
      np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-6, err_msg=path)
    else:
      np.testing.assert_array_equal(new, ref, err_msg=path)
  for a, b in zip(jax.tree.leaves(new_state.opt_state), jax.tree.leaves(old_opt)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

  # Fewer matmuls: the backbone's weight gradients are never built.
  everything = step_fn.make_train_step(
      model, optimizers.adafactor_dual(), path_group={
          p: ("hypernet" if g == "hypernet" else "backbone")
          for p, g in path_group.items()})
  assert _dots(step, state, batch) < _dots(
      everything, state.replace(opt_state=optimizers.adafactor_dual().init(params)),
      batch)
