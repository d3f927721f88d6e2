"""Adafactor with t5x semantics, learning-rate schedules and regex parameter groups.

Design
------
* :func:`adafactor` is one ``optax.GradientTransformation`` that reproduces t5x's
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
  mapped onto it leaf for leaf.

* Parameter groups (:class:`ParamGroup`) select parameters by ``re.search`` on their
  '/'-joined paths; the FIRST matching group wins (big_vision's ordered regexes). Each
  group gets its own :func:`adafactor` (its own step counter, schedule, step offset,
  weight decay) inside ``optax.multi_transform``; a frozen group gets
  ``optax.set_to_zero()`` and therefore holds no state at all. Because every group
  counts its own steps, a hypernetwork group created fresh at global step N starts
  its learning-rate schedule and second-moment decay at 0, as in HINT.

* Per-group state surgery (:func:`merge_group_states`, :func:`restore_pretrained_state`,
  :func:`full_restore_state`) works on ``PartitionState.inner_states[group]`` so a
  restored checkpoint can supply the backbone's Adafactor statistics while the
  hypernetwork's stay fresh. :func:`map_group_states` is the general hook (used to
  load t5x statistics), and :func:`state_partition_specs` derives the optimizer
  state's sharding from the parameters' (``v``/``m`` like the parameter, ``v_row``/
  ``v_col`` with the reduced dimension dropped).
"""
from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Optional, Union

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyper_tasks import tree_utils

_GIN_MODULE = "hyper_tasks.train.optimizers"

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


# --------------------------------------------------------------------------------------
# Parameter groups.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParamGroup:
  """Parameters whose '/'-joined path matches ``pattern`` (``re.search``).

  Attributes:
    name: group name (a key of ``PartitionState.inner_states`` and of the
      learning-rate logs).
    pattern: regex searched in each parameter path; the first matching group wins.
    learning_rate: float or schedule of the group's own (offset) step.
    step_offset: the schedule and the second-moment decay see
      ``max(0, count - step_offset)``.
    frozen: no updates and no optimizer state.
    weight_decay: t5x-style decoupled weight decay rate.
  """
  name: str
  pattern: str
  learning_rate: Optional[LearningRate] = None
  step_offset: int = 0
  frozen: bool = False
  weight_decay: float = 0.0

  def __post_init__(self):
    re.compile(self.pattern)  # Fail at construction on a bad regex.
    if not self.frozen and self.learning_rate is None:
      raise ValueError(f"ParamGroup {self.name!r} is trainable but has no "
                       "learning_rate (set frozen=True to freeze it).")

  @property
  def schedule(self) -> Schedule:
    if self.frozen:
      return constant(0.0)
    return as_schedule(self.learning_rate)


GroupLike = Union[ParamGroup, Mapping[str, Any]]


def _as_groups(groups: Iterable[GroupLike],
               default_group: Optional[GroupLike] = None) -> tuple[ParamGroup, ...]:
  """Normalises groups (dicts allowed, for gin) and appends the catch-all default."""
  out = [g if isinstance(g, ParamGroup) else ParamGroup(**g) for g in groups]
  if default_group is not None:
    d = (default_group if isinstance(default_group, ParamGroup)
         else ParamGroup(**{"pattern": "", **default_group}))
    # The default catches whatever is left, whatever its own pattern says.
    out.append(dataclasses.replace(d, pattern=""))
  names = [g.name for g in out]
  if len(set(names)) != len(names):
    raise ValueError(f"Duplicate parameter group names: {names}.")
  if not out:
    raise ValueError("At least one parameter group is needed.")
  return tuple(out)


def _group_for_path(path: str, groups: Sequence[ParamGroup]) -> Optional[str]:
  for g in groups:
    if re.search(g.pattern, path):
      return g.name
  return None


def _labels(params: PyTree, groups: Sequence[ParamGroup],
            warn_unused: bool = False) -> PyTree:
  """Same-structure tree of group names; raises naming every unmatched path."""
  unmatched = []

  def label(key_path, _):
    path = tree_utils.path_str(key_path)
    name = _group_for_path(path, groups)
    if name is None:
      unmatched.append(path)
    return name

  labels = jax.tree_util.tree_map_with_path(label, params)
  if unmatched:
    patterns = [(g.name, g.pattern) for g in groups]
    raise ValueError(f"{len(unmatched)} parameter(s) match no optimizer group "
                     f"{patterns}: {unmatched}")
  used = set(jax.tree.leaves(labels))
  for g in groups:
    if warn_unused and g.name not in used:
      logging.warning("Optimizer group %r (pattern %r) matches no parameter.",
                      g.name, g.pattern)
  return labels


def group_of(params: PyTree, groups: Iterable[GroupLike],
             default_group: Optional[GroupLike] = None) -> dict[str, str]:
  """``{parameter path: group name}`` for every leaf of ``params``."""
  groups = _as_groups(groups, default_group)
  labels = _labels(params, groups, warn_unused=True)
  return dict(zip(tree_utils.leaf_paths(labels), jax.tree.leaves(labels)))


def _is_partition_state(x) -> bool:
  return isinstance(x, optax.PartitionState)


def _partition_states(state: PyTree) -> list[optax.PartitionState]:
  found = [x for x in jax.tree.leaves(state, is_leaf=_is_partition_state)
           if _is_partition_state(x)]
  if not found:
    raise ValueError("No optax multi_transform (PartitionState) in this optimizer "
                     "state; was it built by make_optimizer?")
  return found


def _unmask(inner: PyTree) -> PyTree:
  return inner.inner_state if isinstance(inner, optax.MaskedState) else inner


def group_counts(state: PyTree) -> dict[str, jax.Array]:
  """``{group: own step counter}`` for every trainable group in ``state``."""
  out = {}
  for ps in _partition_states(state):
    for name, inner in ps.inner_states.items():
      inner = _unmask(inner)
      if isinstance(inner, AdafactorState):
        out[name] = inner.count
  return out


def map_group_states(state: PyTree,
                     fn: Callable[[str, AdafactorState], AdafactorState]) -> PyTree:
  """Replaces each trainable group's :class:`AdafactorState` by ``fn(name, s)``."""
  def visit(x):
    if not _is_partition_state(x):
      return x
    inner = {}
    for name, s in x.inner_states.items():
      core = _unmask(s)
      if isinstance(core, AdafactorState):
        core = fn(name, core)
        s = optax.MaskedState(core) if isinstance(s, optax.MaskedState) else core
      inner[name] = s
    return optax.PartitionState(inner_states=inner)
  return jax.tree.map(visit, state, is_leaf=_is_partition_state)


def state_partition_specs(opt_state: PyTree, params: PyTree, param_specs: PyTree,
                          factored: bool = True,
                          min_dim_size_to_factor: int = 128) -> PyTree:
  """PartitionSpecs for the optimizer state, derived from the parameters' specs.

  ``v`` and ``m`` follow their parameter; factored ``v_row``/``v_col`` follow it with
  the reduced dimension removed (t5x replicates them; keeping the surviving axes
  sharded saves memory on large embeddings); placeholders and counters are
  replicated. Specs may be logical (axis names) or mesh specs.

  Args:
    opt_state: optimizer state (real or from ``jax.eval_shape``).
    params: parameters or their shapes.
    param_specs: same structure as ``params`` with ``PartitionSpec`` leaves.
    factored, min_dim_size_to_factor: as given to :func:`adafactor`.

  Returns:
    A pytree of ``PartitionSpec`` with the structure of ``opt_state``.
  """
  P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
  shapes = {tree_utils.path_str(k): np.shape(v)
            for k, v in jax.tree_util.tree_leaves_with_path(params)}
  specs = {tree_utils.path_str(k): tuple(v) for k, v in
           jax.tree_util.tree_leaves_with_path(
               param_specs, is_leaf=lambda x: isinstance(x, P))}

  def field_specs(field: str, tree: PyTree) -> PyTree:
    def one(path, leaf):
      name = tree_utils.path_str(path)
      shape = shapes[name]
      spec = specs[name] + (None,) * (len(shape) - len(specs[name]))
      dims = factored_dims(shape, factored, min_dim_size_to_factor)
      if field in ("v", "m") and np.shape(leaf) == shape:
        return P(*spec)
      if field in ("v_row", "v_col") and dims is not None:
        dropped = dims[1] if field == "v_row" else dims[0]
        return P(*(s for i, s in enumerate(spec) if i != dropped))
      return P()
    return jax.tree_util.tree_map_with_path(one, tree)

  def visit(x):
    if isinstance(x, AdafactorState):
      return AdafactorState(P(), *(field_specs(f, getattr(x, f))
                                   for f in ("v_row", "v_col", "v", "m")))
    return P()

  return jax.tree.map(visit, opt_state, is_leaf=lambda x: isinstance(x, AdafactorState))


def learning_rates(groups: Iterable[GroupLike], state_or_step: Any,
                   default_group: Optional[GroupLike] = None) -> dict[str, jax.Array]:
  """Per-group learning rate, for TensorBoard.

  Args:
    groups: the groups the optimizer was built from.
    state_or_step: the optimizer state (each group's own counter is read from it)
      or a step number (used as every group's counter).
    default_group: as given to :func:`make_optimizer`.

  Returns:
    ``{group name: lr}``; frozen groups report 0.
  """
  groups = _as_groups(groups, default_group)
  counts = (None if isinstance(state_or_step, (int, np.integer, jax.Array, np.ndarray))
            else group_counts(state_or_step))
  out = {}
  for g in groups:
    if g.frozen:
      out[g.name] = jnp.zeros((), jnp.float32)
      continue
    count = state_or_step if counts is None else counts[g.name]
    step = jnp.maximum(jnp.asarray(count) - g.step_offset, 0)
    out[g.name] = jnp.asarray(g.schedule(step), jnp.float32)
  return out


@dataclasses.dataclass(frozen=True)
class GroupedOptimizer:
  """An optax transformation plus the groups it was built from.

  It quacks like ``optax.GradientTransformation`` (``init``/``update``) and adds the
  group-aware helpers the trainer needs.
  """
  tx: optax.GradientTransformation
  groups: tuple[ParamGroup, ...]

  def init(self, params):
    return self.tx.init(params)

  def update(self, updates, state, params=None, **extra_args):
    return self.tx.update(updates, state, params, **extra_args)

  def group_of(self, params) -> dict[str, str]:
    return group_of(params, self.groups)

  def learning_rates(self, state_or_step) -> dict[str, jax.Array]:
    return learning_rates(self.groups, state_or_step)

  @property
  def group_names(self) -> tuple[str, ...]:
    return tuple(g.name for g in self.groups)


@gin.configurable(module=_GIN_MODULE)
def make_optimizer(groups: Iterable[GroupLike],
                   default_group: Optional[GroupLike] = None,
                   **adafactor_kwargs) -> GroupedOptimizer:
  """Builds ``optax.multi_transform`` over ordered regex groups.

  Args:
    groups: ordered :class:`ParamGroup` (or dicts of its fields); the first group
      whose pattern is found in a parameter path owns the parameter.
    default_group: optional group for every path no pattern matches (its pattern is
      ignored). Without it an unmatched path is an error naming the path.
    **adafactor_kwargs: shared :func:`adafactor` settings (``beta1``,
      ``decay_rate``, ``clipping_threshold``, ...). Per-group learning rate, step
      offset and weight decay come from the groups.

  Returns:
    A :class:`GroupedOptimizer`.
  """
  groups = _as_groups(groups, default_group)
  for key in ("learning_rate", "step_offset", "weight_decay"):
    if key in adafactor_kwargs:
      raise ValueError(f"{key!r} is set per ParamGroup, not in adafactor_kwargs.")
  transforms = {}
  for g in groups:
    if g.frozen:
      transforms[g.name] = optax.set_to_zero()
    else:
      transforms[g.name] = adafactor(g.learning_rate, step_offset=g.step_offset,
                                     weight_decay=g.weight_decay, **adafactor_kwargs)
  tx = optax.multi_transform(transforms, lambda tree: _labels(tree, groups))
  return GroupedOptimizer(tx=tx, groups=groups)


# --------------------------------------------------------------------------------------
# HINT's setups (gin: gin/optim/*.gin).
# --------------------------------------------------------------------------------------

HYPERNET_PATTERN = r"^hypernet/"
PEFT_PATTERN = r"^peft/"


@gin.configurable(module=_GIN_MODULE)
def adafactor_dual(backbone_lr: LearningRate = 1e-3,
                   hypernet_lr: LearningRate = 1e-4,
                   hypernet_step_offset: int = 0,
                   backbone_step_offset: int = 0,
                   weight_decay: float = 0.0,
                   **adafactor_kwargs) -> GroupedOptimizer:
  """Two Adafactors: ``hypernet/`` at ``hypernet_lr``, the rest at ``backbone_lr``."""
  return make_optimizer([
      ParamGroup("hypernet", HYPERNET_PATTERN, hypernet_lr,
                 step_offset=hypernet_step_offset, weight_decay=weight_decay),
      ParamGroup("backbone", "", backbone_lr, step_offset=backbone_step_offset,
                 weight_decay=weight_decay),
  ], **adafactor_kwargs)


@gin.configurable(module=_GIN_MODULE)
def frozen_backbone(hypernet_lr: LearningRate = 1e-4,
                    peft_lr: Optional[LearningRate] = None,
                    weight_decay: float = 0.0,
                    **adafactor_kwargs) -> GroupedOptimizer:
  """Backbone frozen (no state); ``hypernet/`` and ``peft/`` trained.

  ``peft_lr`` defaults to ``hypernet_lr``.
  """
  return make_optimizer([
      ParamGroup("hypernet", HYPERNET_PATTERN, hypernet_lr, weight_decay=weight_decay),
      ParamGroup("peft", PEFT_PATTERN,
                 hypernet_lr if peft_lr is None else peft_lr,
                 weight_decay=weight_decay),
      ParamGroup("backbone", "", frozen=True),
  ], **adafactor_kwargs)


@gin.configurable(module=_GIN_MODULE)
def hypernet_only(hypernet_lr: LearningRate = 1e-4,
                  weight_decay: float = 0.0,
                  **adafactor_kwargs) -> GroupedOptimizer:
  """Only ``hypernet/`` is trained; backbone and ``peft/`` are frozen."""
  return make_optimizer([
      ParamGroup("hypernet", HYPERNET_PATTERN, hypernet_lr, weight_decay=weight_decay),
      ParamGroup("frozen", "", frozen=True),
  ], **adafactor_kwargs)


# --------------------------------------------------------------------------------------
# Per-group optimizer-state restore.
# --------------------------------------------------------------------------------------


def _layout_problems(group: str, fresh: PyTree, restored: PyTree) -> list[str]:
  """Where the restored state of one group differs in structure or shapes."""
  fresh_def, restored_def = jax.tree.structure(fresh), jax.tree.structure(restored)
  if fresh_def != restored_def:
    fresh_paths = set(tree_utils.leaf_paths(fresh))
    restored_paths = set(tree_utils.leaf_paths(restored))
    return [f"group {group!r} has a different structure: only fresh "
            f"{sorted(fresh_paths - restored_paths)}, only restored "
            f"{sorted(restored_paths - fresh_paths)} (treedefs {fresh_def} vs "
            f"{restored_def})"]
  bad = [f"{tree_utils.path_str(path)}: fresh {np.shape(a)} vs restored {np.shape(b)}"
         for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(fresh),
                                 jax.tree.leaves(restored))
         if np.shape(a) != np.shape(b)]
  return [f"group {group!r} has mismatched shapes: " + "; ".join(bad)] if bad else []


def merge_group_states(fresh_state: PyTree, restored_state: PyTree,
                       restore_groups: Iterable[str]) -> PyTree:
  """``inner_states[g]`` from ``restored_state`` for g in ``restore_groups``.

  Every other group keeps ``fresh_state``'s inner state. Works wherever the
  ``PartitionState`` sits in the optimizer state (e.g. inside a chain).

  Raises:
    ValueError: an unknown group name, or restored groups whose state layout
      differs from the fresh one (every such group and leaf named).
  """
  restore_groups = set(restore_groups)
  fresh_parts = _partition_states(fresh_state)
  known = set().union(*(p.inner_states for p in fresh_parts))
  unknown = restore_groups - known
  if unknown:
    raise ValueError(f"Unknown optimizer groups {sorted(unknown)}; the optimizer "
                     f"has {sorted(known)}.")

  def merge(fresh, restored):
    if not _is_partition_state(fresh):
      return fresh  # Not group state (e.g. a chain's own counters): keep fresh.
    names = [n for n in fresh.inner_states if n in restore_groups]
    missing = [n for n in names if n not in restored.inner_states]
    if missing:
      raise ValueError(f"Restored optimizer state lacks groups {missing}.")
    problems = [p for n in names for p in _layout_problems(
        n, fresh.inner_states[n], restored.inner_states[n])]
    if problems:
      raise ValueError("Restored optimizer state does not fit: " + "\n".join(problems))
    inner = dict(fresh.inner_states)
    inner.update({n: restored.inner_states[n] for n in names})
    return optax.PartitionState(inner_states=inner)

  return jax.tree.map(merge, fresh_state, restored_state, is_leaf=_is_partition_state)


@gin.configurable(module=_GIN_MODULE)
def restore_pretrained_state(fresh_state: PyTree, restored_state: PyTree,
                             fresh_groups: Sequence[str] = ("hypernet",)) -> PyTree:
  """HINT stage 1: every group's state from the checkpoint except ``fresh_groups``."""
  names = set().union(*(p.inner_states for p in _partition_states(fresh_state)))
  return merge_group_states(fresh_state, restored_state, names - set(fresh_groups))


@gin.configurable(module=_GIN_MODULE)
def full_restore_state(fresh_state: PyTree, restored_state: PyTree) -> PyTree:
  """HINT stage 2: every group's optimizer state from the checkpoint."""
  names = set().union(*(p.inner_states for p in _partition_states(fresh_state)))
  return merge_group_states(fresh_state, restored_state, names)
