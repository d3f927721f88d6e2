"""The jitted train step: microbatched gradients, grouped update, NaN guard, metrics.

``make_train_step`` returns a pure function ``(state, batch) -> (state, metrics)``:

* **Microbatching** (gradient accumulation): the batch ``[B, ...]`` is split into
  ``M`` microbatches of ``B / M`` examples with a ``lax.scan``. Microbatch ``i`` takes
  rows ``i, i + M, i + 2M, ...``: when each device holds a contiguous block of the
  (data-sharded) batch, every microbatch is then spread over all devices and the
  split needs no communication. Each microbatch's gradient is weighted by its
  share of the full batch's loss normaliser (``model.loss_normalizer``): its share
  of the loss weights for the default token mean, 1 for a constant or summed loss
  (t5x's), so the accumulated gradient equals the full-batch gradient (up to float
  summation order) whatever ``M`` is.
* **Dropout**: microbatch ``i`` of step ``s`` uses ``fold_in(fold_in(rng, s), i)``.
* **NaN/Inf guard**: when the loss, a gradient or an update is not finite the state is left
  unchanged (the update is discarded on device) and ``metrics["finite"]`` is 0; the
  trainer stops with an error naming the step, so no checkpoint ever holds NaNs.
* **Frozen groups cost nothing**: gradients are taken with respect to the
  trainable parameters only (the frozen ones enter the loss as constants, so XLA
  never builds their backward matmuls); the frozen parameters are carried over
  untouched, and the finiteness check and norms read trainable gradients and
  updates only. The optimizer still sees a full-shaped gradient tree (zeros in
  the frozen groups, which ``optax.set_to_zero`` ignores).
* **Metrics** (device scalars): loss, z_loss, accuracy, loss_per_token, num_tokens,
  num_examples, ``learning_rate/<group>``, ``grad_norm/<group>``,
  ``param_norm/<group>`` and their global ``grad_norm``/``param_norm``; frozen
  groups report parameter norms only.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from hyper_tasks import tree_utils
from hyper_tasks.models.losses import loss_weights
from hyper_tasks.train import optimizers
from hyper_tasks.train.train_state import TrainState

PyTree = Any
Batch = Mapping[str, jax.Array]

_SUMMED = ("num_tokens", "num_examples")
_WEIGHTED = ("loss", "z_loss", "accuracy", "loss_per_token")
_PER_TOKEN = ("accuracy", "loss_per_token")  # averaged by token share


def split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  """``[B, ...]`` -> ``[M, B / M, ...]``; microbatch i holds rows i, i + M, ...

  With grouped instructions (``hyper_encoder_input_tokens`` ``[B / g, Lh]``, row
  ``j`` for examples ``j * g .. j * g + g - 1``) whole groups are dealt out
  instead: microbatch i holds groups i, i + M, ... with their ``g`` examples, so
  the same layout holds inside every microbatch.
  """
  m = num_microbatches
  hyper = batch.get("hyper_encoder_input_tokens")
  groups = None if hyper is None else hyper.shape[0]

  def one(x):
    b = x.shape[0]
    n = b if groups is None else groups
    if n % m or b % n:
      raise ValueError(f"Batch of {b} rows ({n} instruction groups) is not "
                       f"divisible by num_microbatches={m}.")
    g = b // n
    x = x.reshape((n // m, m, g) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape((m, b // m) + x.shape[3:])
  return {k: one(v) for k, v in batch.items()}


def _group_sq_norms(tree: PyTree, path_group: Mapping[str, str],
                    groups: tuple[str, ...]) -> dict[str, jax.Array]:
  """``{group: sum of squares}`` of a parameter-shaped tree."""
  out = {g: jnp.zeros((), jnp.float32) for g in groups}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    g = path_group[tree_utils.path_str(path)]
    out[g] = out[g] + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
  return out


def _all_finite(tree: PyTree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def split_trainable(params: PyTree, path_group: Mapping[str, str],
                    frozen: set) -> tuple[dict, dict]:
  """``(trainable, frozen)`` ``{parameter path: leaf}`` dicts of ``params``."""
  trainable, fixed = {}, {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = tree_utils.path_str(path)
    (fixed if path_group[name] in frozen else trainable)[name] = leaf
  return trainable, fixed


def merge_trainable(params: PyTree, trainable: Mapping[str, Any],
                    fixed: Mapping[str, Any]) -> PyTree:
  """``params``' structure with leaves from ``trainable`` or ``fixed`` by path."""
  def pick(path, _):
    name = tree_utils.path_str(path)
    return trainable[name] if name in trainable else fixed[name]
  return jax.tree_util.tree_map_with_path(pick, params)


def make_train_step(model, optimizer: optimizers.GroupedOptimizer,
                    path_group: Mapping[str, str],
                    num_microbatches: int = 1) -> Callable[..., Any]:
  """Builds ``train_step(state, batch) -> (new_state, metrics)`` (not yet jitted).

  Args:
    model: an ``EncoderDecoderModel`` (``loss_fn(params, batch, dropout_rng)``).
    optimizer: the grouped optimizer.
    path_group: ``{parameter path: group}`` (``optimizer.group_of(params)``).
    num_microbatches: gradient-accumulation steps per batch.
  """
  groups = optimizer.group_names
  frozen = {g.name for g in optimizer.groups if g.frozen}
  normalizer = getattr(model, "loss_normalizer", None)
  if normalizer is None:  # a model without one: token mean
    normalizer = lambda w: jnp.maximum(jnp.sum(w), 1.0)

  def grads_and_metrics(params, batch, step_rng):
    """Gradients of the trainable parameters only, ``{path: grad}``, and metrics."""
    trainable, fixed = split_trainable(params, path_group, frozen)

    def loss_of_trainable(train, batch, rng):
      return model.loss_fn(merge_trainable(params, train, fixed), batch, rng)

    grad_fn = jax.value_and_grad(loss_of_trainable, has_aux=True)
    if num_microbatches <= 1:
      (_, metrics), grads = grad_fn(trainable, batch, step_rng)
      return grads, {k: metrics[k] for k in _WEIGHTED + _SUMMED}

    micro = split_microbatches(batch, num_microbatches)
    total_weight = jnp.maximum(jnp.sum(loss_weights(batch)), 1.0)
    total_norm = normalizer(loss_weights(batch))

    def body(carry, inputs):
      grads_acc, metrics_acc = carry
      i, mb = inputs
      (_, m), g = grad_fn(trainable, mb, jax.random.fold_in(step_rng, i))
      # This microbatch's share of the full batch's normaliser: its token share
      # for the token mean, 1 for a constant or summed loss.
      share = normalizer(loss_weights(mb)) / total_norm
      grads_acc = jax.tree.map(lambda a, x: a + share * x.astype(a.dtype),
                               grads_acc, g)
      metrics_acc = dict(metrics_acc)
      for k in _WEIGHTED:
        w = share if k not in _PER_TOKEN else (
            jnp.sum(loss_weights(mb)) / total_weight)
        metrics_acc[k] = metrics_acc[k] + w * m[k]
      for k in _SUMMED:
        metrics_acc[k] = metrics_acc[k] + m[k]
      return (grads_acc, metrics_acc), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
    metrics0 = {k: jnp.zeros((), jnp.float32) for k in _WEIGHTED + _SUMMED}
    steps = jnp.arange(num_microbatches)
    (grads, metrics), _ = jax.lax.scan(body, (zeros, metrics0), (steps, micro))
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trainable)
    return grads, metrics

  def train_step(state: TrainState, batch: Batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    train_grads, metrics = grads_and_metrics(state.params, batch, step_rng)
    # The optimizer takes a full tree; frozen groups (set_to_zero) ignore theirs.
    _, fixed = split_trainable(state.params, path_group, frozen)
    grads = merge_trainable(state.params, train_grads,
                            {k: jnp.zeros_like(v) for k, v in fixed.items()})
    updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
    train_updates, _ = split_trainable(updates, path_group, frozen)
    train_params, _ = split_trainable(state.params, path_group, frozen)
    # Updates too: a schedule or optimizer statistic can overflow on its own.
    finite = (_all_finite(train_grads) & _all_finite(train_updates)
              & jnp.isfinite(metrics["loss"]))
    # A non-finite step changes nothing (the trainer then stops and names it);
    # frozen parameters are carried over as they are.
    new_train = {k: jnp.where(finite, p + train_updates[k], p)
                 for k, p in train_params.items()}
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(step=state.step + 1,
                              params=merge_trainable(state.params, new_train, fixed),
                              opt_state=keep(new_opt, state.opt_state))

    metrics = dict(metrics)
    metrics["finite"] = finite.astype(jnp.float32)
    lrs = optimizer.learning_rates(state.opt_state)
    grad_sq = _group_sq_norms(train_grads, path_group, groups)
    param_sq = _group_sq_norms(state.params, path_group, groups)
    for g in groups:
      metrics[f"learning_rate/{g}"] = lrs[g]
      metrics[f"param_norm/{g}"] = jnp.sqrt(param_sq[g])
      if g not in frozen:
        metrics[f"grad_norm/{g}"] = jnp.sqrt(grad_sq[g])
    trainable = [g for g in groups if g not in frozen]
    metrics["grad_norm"] = jnp.sqrt(sum((grad_sq[g] for g in trainable),
                                        jnp.zeros((), jnp.float32)))
    metrics["param_norm"] = jnp.sqrt(sum(param_sq.values(),
                                         jnp.zeros((), jnp.float32)))
    return new_state, metrics

  # The gradient function, for tests and benchmarks: ``(params, batch, rng) ->
  # ({trainable path: grad}, metrics)``.
  train_step.trainable_grads = grads_and_metrics
  return train_step
