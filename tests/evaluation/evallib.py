"""Helpers shared by the evaluation tests."""
import jax
import numpy as np


def random_params(model, seed=0):
  """Numpy random parameters in the model's tree (norm scales 1, biases 0).

  The tree comes from `eval_shape`, so nothing is compiled: XLA takes seconds
  of CPU to compile the model's own random initialisers.
  """
  shapes = {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 4),
            "hyper_encoder_input_tokens": (2, 8)}
  abstract = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.PRNGKey(0), shapes, boxed=False))["params"]
  rng = np.random.default_rng(seed)

  def init(path, leaf):
    if jax.tree_util.keystr(path).endswith("['scale']"):
      return np.ones(leaf.shape, leaf.dtype)
    if leaf.ndim == 1:
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = leaf.shape[0] if leaf.ndim > 1 else 1
    return (rng.normal(size=leaf.shape) * fan_in ** -0.5).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(init, abstract)


def adam_trainer(model, params, learning_rate=1e-2):
  """``(step, state)``: one jitted Adam step on ``model.loss_fn``,
  ``step(params, state, batch) -> (params, state, loss)``, and its initial state."""
  import optax  # pylint: disable=g-import-not-at-top
  opt = optax.adam(learning_rate)

  @jax.jit
  def step(params, state, batch):
    (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
        params, batch)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss
  return step, opt.init(params)
