"""Adafactor with t5x semantics and learning-rate schedules (one parameter group).

:func:`adafactor` is one ``optax.GradientTransformation`` that reproduces t5x's
``t5x.adafactor.Adafactor`` update rule (default, heuristic factorization):

    step   = max(0, count - step_offset)          # the group's own counter
    beta2  = 1 - (step + 1) ** -decay_rate        # 0 at the first step
    g2     = grad**2 + epsilon1
    factored (two largest dims >= min_dim_size_to_factor, row = 2nd largest,
              col = largest):
      v_row = beta2 v_row + (1 - beta2) mean_col(g2)
      v_col = beta2 v_col + (1 - beta2) mean_row(g2)
      y     = grad / sqrt(v_row / mean(v_row)) / sqrt(v_col)
    otherwise:
      v     = beta2 v + (1 - beta2) g2;     y = grad / sqrt(v)
    y     /= max(1, rms(y) / clipping_threshold)
    u      = lr(step) * max(rms(param), epsilon2) * y
    m      = beta1 m + (1 - beta1) u; u = m   (only when beta1 is set)
    param <- param - u - weight_decay * param  (t5x: decay is not scaled by lr)

``optax.scale_by_factored_rms`` is close but not the same: it keeps the second
moments in the parameter dtype (t5x keeps them in float32, which matters for
bfloat16 parameters) and evaluates the decay at ``count - step_offset`` without
clamping at zero. So the rule is written out here; it is short. The learning rate
is applied inside the transformation so that the schedule and the second-moment
decay read the same counter.

Optimizer state per parameter mirrors t5x's ``v_row``, ``v_col``, ``v``, ``m`` with
t5x's ``(1,)`` placeholders for the unused ones, so t5x optimizer state can be
mapped onto it leaf for leaf (``train/opt_state_restore.py``).

The schedules are plain functions of the (group's) step, usable inside jit. Gin
registers everything here under the module ``hyper_tasks.train.optimizers`` (the
public facade, ``train/optimizers.py``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Optional, Union

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

# Gin names stay those of the facade module (gin files bind them there).
_GIN_MODULE = "hyper_tasks.train"

Schedule = Callable[[Any], Any]
LearningRate = Union[float, Schedule]
PyTree = Any

# --------------------------------------------------------------------------------------
# Schedules: plain functions of the (group's) step, usable inside jit.
# --------------------------------------------------------------------------------------


def _as_float(step) -> jax.Array:
  return jnp.asarray(step, jnp.float32)


@gin.configurable(module=_GIN_MODULE)
def constant(value: float) -> Schedule:
  """``lr(step) = value``."""
  def schedule(step):
    del step  # Constant.
    return jnp.asarray(value, jnp.float32)
  return schedule


@gin.configurable(module=_GIN_MODULE)
def rsqrt_decay(base_lr: float = 1.0, warmup_steps: int = 10_000) -> Schedule:
  """T5's schedule: ``base_lr / sqrt(max(step, warmup_steps))`` (flat, then decays)."""
  def schedule(step):
    return base_lr / jnp.sqrt(jnp.maximum(_as_float(step), float(warmup_steps)))
  return schedule


@gin.configurable(module=_GIN_MODULE)
def linear_warmup_rsqrt_decay(base_lr: float = 1.0,
                              warmup_steps: int = 10_000) -> Schedule:
  """t5x's ``constant * linear_warmup * rsqrt_decay``: ramps from 0, then rsqrt."""
  if warmup_steps <= 0:
    raise ValueError(f"warmup_steps must be positive, got {warmup_steps}.")
  decay = rsqrt_decay(base_lr, warmup_steps)

  def schedule(step):
    return decay(step) * jnp.minimum(1.0, _as_float(step) / warmup_steps)
  return schedule


@gin.configurable(module=_GIN_MODULE)
def warmup_cosine_decay(base_lr: float, decay_steps: int, warmup_steps: int = 0,
                        end_lr: float = 0.0) -> Schedule:
  """Linear warmup to ``base_lr``, then half a cosine down to ``end_lr``.

  ``decay_steps`` counts from step 0 (it includes the warmup); after it the rate
  stays at ``end_lr``.
  """
  if decay_steps <= warmup_steps:
    raise ValueError(f"decay_steps ({decay_steps}) must exceed warmup_steps "
                     f"({warmup_steps}).")

  def schedule(step):
    s = _as_float(step)
    warm = jnp.minimum(1.0, s / warmup_steps) if warmup_steps else 1.0
    progress = jnp.clip((s - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)
    cos = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return warm * (end_lr + (base_lr - end_lr) * cos)
  return schedule


def as_schedule(learning_rate: LearningRate) -> Schedule:
  """A float becomes a constant schedule; callables pass through."""
  if callable(learning_rate):
    return learning_rate
  return constant(float(learning_rate))


# --------------------------------------------------------------------------------------
# Adafactor (t5x semantics).
# --------------------------------------------------------------------------------------


class AdafactorState(NamedTuple):
  """State of one :func:`adafactor` (one parameter group).

  ``v_row``/``v_col``/``v``/``m`` are trees shaped like the parameters; unused slots
  hold ``(1,)`` zeros exactly as in t5x checkpoints.
  """
  count: jax.Array  # int32 [], number of updates this group has applied.
  v_row: PyTree     # factored: param shape without the col dim.
  v_col: PyTree     # factored: param shape without the row dim.
  v: PyTree         # unfactored: param shape.
  m: PyTree         # momentum (beta1 set): param shape.


def factored_dims(shape: Sequence[int], factored: bool = True,
                  min_dim_size_to_factor: int = 128) -> Optional[tuple[int, int]]:
  """``(row_dim, col_dim)`` to factor over, or None for a full second moment.

  t5x's heuristic: the second-largest dim is the row, the largest the column (ties
  keep the original order); factor only when the second largest is at least
  ``min_dim_size_to_factor``.
  """
  if not factored or len(shape) < 2:
    return None
  order = np.argsort(np.asarray(shape), kind="stable")
  if shape[order[-2]] < min_dim_size_to_factor:
    return None
  return int(order[-2]), int(order[-1])


def _placeholder() -> jax.Array:
  return jnp.zeros((1,), jnp.float32)


def _rms(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.mean(jnp.square(x)))


def decay_rate_at(step, exponent: float = 0.8) -> jax.Array:
  """Adafactor's second-moment decay ``1 - (step + 1) ** -exponent``."""
  return 1.0 - (_as_float(step) + 1.0) ** (-exponent)


@gin.configurable(module=_GIN_MODULE)
def adafactor(learning_rate: LearningRate,
              *,
              decay_rate: float = 0.8,
              step_offset: int = 0,
              epsilon1: float = 1e-30,
              epsilon2: float = 1e-3,
              clipping_threshold: Optional[float] = 1.0,
              multiply_by_parameter_scale: bool = True,
              beta1: Optional[float] = None,
              weight_decay: float = 0.0,
              min_dim_size_to_factor: int = 128,
              factored: bool = True,
              dtype_momentum: Any = jnp.float32) -> optax.GradientTransformation:
  """Adafactor as in t5x, returning final updates (add them to the parameters).

  Args:
    learning_rate: float or schedule; evaluated at ``max(0, count - step_offset)``.
    decay_rate: exponent of the second-moment decay ``1 - (step + 1)^-decay_rate``.
    step_offset: subtracted from this transformation's own counter for both the
      schedule and the decay (t5x's knob to restart the accumulators' warmup).
    epsilon1: added to squared gradients.
    epsilon2: lower bound of the parameter scale.
    clipping_threshold: update clipping by block RMS; None disables it.
    multiply_by_parameter_scale: scale updates by ``max(rms(param), epsilon2)``.
    beta1: momentum coefficient; None (t5x default) keeps no momentum.
    weight_decay: t5x-style decay ``param *= 1 - weight_decay`` (not lr-scaled).
    min_dim_size_to_factor: factor only when the two largest dims are this big.
    factored: False keeps full second moments for every parameter.
    dtype_momentum: dtype of ``m``.

  Returns:
    An ``optax.GradientTransformation`` with :class:`AdafactorState`.
  """
  schedule = as_schedule(learning_rate)

  def init_param(param):
    dims = factored_dims(param.shape, factored, min_dim_size_to_factor)
    v_row = v_col = v = m = _placeholder()
    if dims is not None:
      row, col = dims
      v_row = jnp.zeros(np.delete(param.shape, col), jnp.float32)
      v_col = jnp.zeros(np.delete(param.shape, row), jnp.float32)
    else:
      v = jnp.zeros(param.shape, jnp.float32)
    if beta1 is not None:
      m = jnp.zeros(param.shape, dtype_momentum)
    return v_row, v_col, v, m

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    per_leaf = [init_param(p) for p in leaves]
    trees = [treedef.unflatten([s[i] for s in per_leaf]) for i in range(4)]
    return AdafactorState(jnp.zeros([], jnp.int32), *trees)

  def update_param(grad, param, v_row, v_col, v, m, beta2, lr):
    grad = grad.astype(jnp.float32)
    param32 = param.astype(jnp.float32)
    mix = 1.0 - beta2
    grad_sqr = grad * grad + epsilon1
    dims = factored_dims(param.shape, factored, min_dim_size_to_factor)
    if dims is not None:
      row, col = dims
      v_row = beta2 * v_row + mix * jnp.mean(grad_sqr, axis=col)
      v_col = beta2 * v_col + mix * jnp.mean(grad_sqr, axis=row)
      # v_row lost the col axis; find where the row axis sits in it.
      row_in_v_row = row - (1 if col < row else 0)
      row_mean = jnp.mean(v_row, axis=row_in_v_row, keepdims=True)
      row_factor = jax.lax.rsqrt(v_row / row_mean)
      col_factor = jax.lax.rsqrt(v_col)
      y = (grad * jnp.expand_dims(row_factor, axis=col)
           * jnp.expand_dims(col_factor, axis=row))
    else:
      v = beta2 * v + mix * grad_sqr
      y = grad * jax.lax.rsqrt(v)
    if clipping_threshold is not None:
      y = y / jnp.maximum(1.0, _rms(y) / clipping_threshold)
    scale = lr
    if multiply_by_parameter_scale:
      scale = scale * jnp.maximum(_rms(param32), epsilon2)
    step_size = scale * y
    if beta1 is not None:
      m = (beta1 * m + (1.0 - beta1) * step_size).astype(dtype_momentum)
      step_size = m.astype(jnp.float32)
    update = -step_size
    if weight_decay:
      update = update - weight_decay * param32
    return update.astype(param.dtype), v_row, v_col, v, m

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("adafactor needs params (parameter scale, weight decay).")
    step = jnp.maximum(state.count - step_offset, 0)
    beta2 = decay_rate_at(step, decay_rate)
    lr = jnp.asarray(schedule(step), jnp.float32)
    grads, treedef = jax.tree.flatten(updates)
    others = [treedef.flatten_up_to(t) for t in
              (params, state.v_row, state.v_col, state.v, state.m)]
    per_leaf = [update_param(g, *rest, beta2, lr) for g, *rest in zip(grads, *others)]
    trees = [treedef.unflatten([s[i] for s in per_leaf]) for i in range(5)]
    return trees[0], AdafactorState(state.count + 1, *trees[1:])

  return optax.GradientTransformation(init_fn, update_fn)
