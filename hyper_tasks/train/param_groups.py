"""Regex parameter groups and the grouped optimizer state.

* :class:`ParamGroup` selects parameters by ``re.search`` on their '/'-joined paths;
  the FIRST matching group wins (big_vision's ordered regexes). Each group gets its
  own Adafactor (its own step counter, schedule, step offset, weight decay) inside
  ``optax.multi_transform`` (``train/optimizers.py``); a frozen group gets
  ``optax.set_to_zero()`` and therefore holds no state at all. Because every group
  counts its own steps, a hypernetwork group created fresh at global step N starts
  its learning-rate schedule and second-moment decay at 0, as in HINT.
* The grouped state (``PartitionState.inner_states[group]``): :func:`group_counts`,
  :func:`map_group_states` (the hook the optimizer-state restore fills through),
  :func:`state_partition_specs` (the state's sharding derived from the parameters':
  ``v``/``m`` like the parameter, ``v_row``/``v_col`` with the reduced dimension
  dropped) and :func:`learning_rates` (per group, for TensorBoard).
"""
from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyper_tasks import tree_utils
from hyper_tasks.train.adafactor import (AdafactorState, LearningRate, Schedule,
                                         as_schedule, constant, factored_dims)

PyTree = Any

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


def as_groups(groups: Iterable[GroupLike],
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


def group_labels(params: PyTree, groups: Sequence[ParamGroup],
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
  groups = as_groups(groups, default_group)
  labels = group_labels(params, groups, warn_unused=True)
  return dict(zip(tree_utils.leaf_paths(labels), jax.tree.leaves(labels)))


def _is_partition_state(x) -> bool:
  return isinstance(x, optax.PartitionState)


def partition_states(state: PyTree) -> list[optax.PartitionState]:
  found = [x for x in jax.tree.leaves(state, is_leaf=_is_partition_state)
           if _is_partition_state(x)]
  if not found:
    raise ValueError("No optax multi_transform (PartitionState) in this optimizer "
                     "state; was it built by make_optimizer?")
  return found


def unmask(inner: PyTree) -> PyTree:
  return inner.inner_state if isinstance(inner, optax.MaskedState) else inner


def group_counts(state: PyTree) -> dict[str, jax.Array]:
  """``{group: own step counter}`` for every trainable group in ``state``."""
  out = {}
  for ps in partition_states(state):
    for name, inner in ps.inner_states.items():
      inner = unmask(inner)
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
      core = unmask(s)
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
  groups = as_groups(groups, default_group)
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
