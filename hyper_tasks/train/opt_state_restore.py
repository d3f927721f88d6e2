"""Optimizer-state restore: one filler, a lookup per checkpoint format.

Our grouped optimizer keeps, per trainable group, an ``AdafactorState`` whose
per-parameter ``v_row``/``v_col``/``v``/``m`` mirror t5x's layout. Restoring it from
a checkpoint is always the same walk (:func:`fill_group_states`): for every
parameter of every requested group, look the statistic up in the checkpoint (after
the run's ``assignment_map``), check its shape and place it on the fresh leaf's
sharding; set the group's step counter; name every problem at once. What differs
per format is only where the statistics sit, which a :class:`StateSource` holds:

* ours (:func:`ours_source`): a flat saved optimizer state
  (``.../inner_states/<group>/[inner_state/]<field>/<param>``, ``.../count``), one
  entry per group, or a live state (:func:`source_from_state`);
* t5x (:func:`t5x_source`): ``state/param_states/<param>/<field>`` and
  ``state/step``, one flat state shared by every group;
* HF checkpoints hold no optimizer state (no source; groups start fresh).

Parameters the restore re-initialised keep fresh statistics (``keep_fresh``);
momentum kept on one side only starts fresh.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import jax
import numpy as np
import optax

from hyper_tasks import tree_utils
from hyper_tasks.train import param_groups
from hyper_tasks.train import param_restore
from hyper_tasks.train.adafactor import AdafactorState

FIELDS = ("v_row", "v_col", "v", "m")
_SHARED = None  # StateSource.stats key of statistics shared by every group (t5x).

# {field: {parameter path: array}}
FieldStats = Mapping[str, Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class StateSource:
  """Adafactor statistics of one checkpoint, by group, field and parameter path.

  Attributes:
    name: the format, in messages (``"t5x"``, ``"restored"``).
    stats: ``{group: {field: {parameter path: array}}}``; the key None holds
      statistics shared by every group (t5x keeps one state for all parameters).
    counts: ``{group (or None): step counter}``; absent: keep the fresh counter.
    mismatch: message format of one shape mismatch, with ``key`` (the leaf's path
      in our group state), ``param``, ``field``, ``theirs`` and ``ours``.
  """
  name: str
  stats: Mapping[Optional[str], FieldStats]
  counts: Mapping[Optional[str], Any]
  mismatch: str = "{key}: fresh {ours} vs restored {theirs}"

  def groups(self) -> Optional[set[str]]:
    """The groups this source holds, or None when one state serves every group."""
    return None if _SHARED in self.stats else set(self.stats)

  def group_stats(self, group: str) -> FieldStats:
    return self.stats[group] if group in self.stats else self.stats[_SHARED]

  def count(self, group: str) -> Any:
    return self.counts.get(group, self.counts.get(_SHARED))


def ours_source(flat_opt: Mapping[str, Any], name: str = "restored") -> StateSource:
  """Statistics of our own (flat) saved optimizer state, per group."""
  stats: dict[str, dict[str, dict[str, Any]]] = {}
  counts: dict[str, Any] = {}
  for key, value in flat_opt.items():
    parts = key.split("/")
    if "inner_states" not in parts:
      continue
    i = parts.index("inner_states")
    group, rest = parts[i + 1], parts[i + 2:]
    if rest and rest[0] == "inner_state":
      rest = rest[1:]
    if not rest:
      continue
    entry = stats.setdefault(group, {f: {} for f in FIELDS})
    if rest[0] == "count":
      counts[group] = value
    elif rest[0] in FIELDS and len(rest) > 1:
      entry[rest[0]]["/".join(rest[1:])] = value
  return StateSource(name, stats, counts)


def source_from_state(opt_state: Any) -> StateSource:
  """A live optimizer state (e.g. another run's) as a source."""
  return ours_source(tree_utils.leaves_by_path(opt_state))


def t5x_source(t5x_opt_state: Mapping[str, Any]) -> StateSource:
  """t5x's Adafactor statistics (``load_t5x_checkpoint``'s optimizer state)."""
  prefix = "state/param_states/"
  stats: dict[str, dict[str, Any]] = {f: {} for f in FIELDS}
  for key, value in t5x_opt_state.items():
    if key.startswith(prefix):
      param, _, field = key[len(prefix):].rpartition("/")
      if field in FIELDS:
        stats[field][param] = value
  step = t5x_opt_state.get("state/step")
  return StateSource("t5x", {_SHARED: stats},
                     {} if step is None else {_SHARED: step},
                     mismatch="{param}/{field}: t5x {theirs} vs ours {ours}")


def group_names(opt_state: Any) -> tuple[set[str], list[str]]:
  """``(every group, trainable groups)`` of a grouped optimizer state."""
  known, trainable = set(), []
  for ps in param_groups.partition_states(opt_state):
    for name, inner in ps.inner_states.items():
      known.add(name)
      if isinstance(param_groups.unmask(inner), AdafactorState):
        trainable.append(name)
  return known, trainable


def check_groups_present(groups: Iterable[str], have: Optional[set[str]],
                         where: str) -> None:
  """Raises ``RestoreError`` naming the ``groups`` a checkpoint's optimizer state
  lacks (``have``: the groups it holds; None: one state for every group)."""
  absent = [] if have is None else sorted(set(groups) - have)
  if absent:
    raise param_restore.RestoreError(
        f"{where} optimizer state has no group(s) {absent} (it has "
        f"{sorted(have)}); use optimizer_state='fresh' or name them in "
        "fresh_groups.")


def fill_group_states(fresh_state: Any, source: StateSource,
                      groups: Optional[Iterable[str]] = None, *,
                      assignment_map: param_restore.AssignmentMap = (),
                      keep_fresh: Iterable[str] = (),
                      require_all: bool = False) -> Any:
  """``fresh_state`` with the statistics and counters of ``groups`` from ``source``.

  Args:
    fresh_state: a state of an optimizer built by ``optimizers.make_optimizer``.
    source: where the statistics come from (a lookup per format, see above).
    groups: the groups to fill (default: every trainable group); the others keep
      their fresh state (e.g. a new hypernetwork).
    assignment_map: the renames of checkpoint keys the parameters were restored
      with (``param_restore.apply_assignment_map``).
    keep_fresh: parameter paths whose statistics stay fresh (re-initialised
      parameters).
    require_all: an error when a parameter of a filled group has no statistics
      (otherwise it keeps fresh ones).

  Raises:
    param_restore.RestoreError: unknown groups, groups the source lacks, shape
      mismatches (every one named) or, with ``require_all``, missing statistics.
  """
  known, trainable = group_names(fresh_state)
  groups = list(trainable if groups is None else groups)
  unknown = set(groups) - known
  if unknown:
    raise param_restore.RestoreError(
        f"Unknown optimizer groups {sorted(unknown)}; the optimizer has "
        f"{sorted(known)}.")
  check_groups_present(groups, source.groups(), f"The {source.name}")
  keep_fresh = set(keep_fresh)
  mismatched: dict[str, list[str]] = {}
  missing: list[str] = []

  def fill(name: str, state: AdafactorState, masked: bool) -> AdafactorState:
    if name not in groups:
      return state
    stats = {f: param_restore.apply_assignment_map(table, assignment_map)
             for f, table in source.group_stats(name).items()}
    fields = {}
    for field in FIELDS:
      def one(path, leaf, field=field):
        param = tree_utils.path_str(path)
        value = None if param in keep_fresh else stats[field].get(param)
        if value is None:
          if field == FIELDS[0] and param not in keep_fresh:
            missing.append(param)  # Each parameter once.
          return leaf
        theirs, ours = tuple(np.shape(value)), tuple(leaf.shape)
        if theirs != ours:
          if field == "m" and (1,) in (theirs, ours):
            return leaf  # Momentum kept on one side only: start it fresh.
          key = ("inner_state/" if masked else "") + f"{field}/{param}"
          mismatched.setdefault(name, []).append(source.mismatch.format(
              key=key, param=param, field=field, theirs=theirs, ours=ours))
          return leaf
        return jax.device_put(np.asarray(value, leaf.dtype), leaf.sharding)
      fields[field] = jax.tree_util.tree_map_with_path(one, getattr(state, field))
    count = source.count(name)
    if count is not None:
      count = jax.device_put(np.asarray(count, state.count.dtype),
                             state.count.sharding)
    return state._replace(count=state.count if count is None else count, **fields)

  out = _map_adafactor_states(fresh_state, fill)
  problems = [f"group {g!r} has mismatched shapes: " + "; ".join(p)
              for g, p in mismatched.items()]
  if missing and require_all:
    problems.append(f"no {source.name} statistics for: {sorted(missing)}")
  if problems:
    raise param_restore.RestoreError(
        f"Cannot restore the optimizer state from the {source.name} checkpoint: "
        + "; ".join(problems))
  return out


def _map_adafactor_states(state: Any, fn) -> Any:
  """``param_groups.map_group_states`` telling ``fn`` whether the group's state is
  masked (the ``inner_state/`` level of its paths)."""
  masked = set()
  for ps in param_groups.partition_states(state):
    masked |= {n for n, s in ps.inner_states.items()
               if isinstance(s, optax.MaskedState)}
  return param_groups.map_group_states(
      state, lambda name, s: fn(name, s, name in masked))
