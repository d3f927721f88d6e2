"""The grid of a sweep: axes, points, run names, seeds, and the check that every
point resolves to its own gin configuration (see :mod:`hyper_tasks.sweep`)."""
from __future__ import annotations

import ast
import dataclasses
import itertools
import re
from typing import Any, Mapping, Optional, Sequence

import gin

from hyper_tasks import gin_macros
from hyper_tasks import gin_utils

_MACRO_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_SAFE_RE = re.compile(r"[^A-Za-z0-9_.=,+-]")


class SweepError(ValueError):
  """A grid that cannot be run as asked (the message names the axis and points)."""


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[Any]]]:
  """``["ADAPTER_SIZE=[8,64]", ...]`` -> ``[("ADAPTER_SIZE", [8, 64]), ...]``.

  Values are Python literals that gin reads back unchanged (numbers, strings,
  booleans, None, lists, tuples, dicts).

  Raises:
    ValueError: naming the malformed spec: not ``NAME=[...]``, an empty list, a value
      gin cannot read, a value given twice, or an axis given twice.
  """
  axes = []
  for spec in specs:
    name, sep, values = spec.partition("=")
    name = name.strip()
    if not sep or not _MACRO_RE.match(name):
      raise ValueError(f"--grid {spec!r}: expected NAME=[v1,v2,...].")
    try:
      parsed = ast.literal_eval(values.strip())
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"--grid {spec!r}: values are not a Python literal list "
                       f"({e}).") from None
    if not isinstance(parsed, (list, tuple)) or not parsed:
      raise ValueError(f"--grid {spec!r}: give a non-empty list, e.g. "
                       f"{name}=[8,64].")
    if name in (a for a, _ in axes):
      raise ValueError(f"--grid names {name!r} twice.")
    for i, value in enumerate(parsed):
      if not is_gin_literal(value):
        raise ValueError(f"--grid {spec!r}: {value!r} is not a gin literal (use "
                         f"numbers, strings, booleans, None, lists, tuples, dicts).")
      if value in parsed[:i]:
        raise ValueError(f"--grid {spec!r}: {value!r} is given twice.")
    axes.append((name, list(parsed)))
  return axes


def gin_literal(value: Any) -> str:
  """A Python value as gin binding text (gin reads Python literals)."""
  return repr(value)


def is_gin_literal(value: Any) -> bool:
  """Whether gin reads ``gin_literal(value)`` back as ``value``."""
  try:
    parsed = gin_macros.parse_value(gin_literal(value))
  except (SyntaxError, ValueError):
    return False
  return type(parsed) is type(value) and parsed == value


def run_name(point: Mapping[str, Any]) -> str:
  """A filesystem-safe, readable name: ``ADAPTER_SIZE=8,NUM_PREFIX_TOKENS=0``."""
  text = ",".join(f"{k}={v}" for k, v in point.items())
  return _SAFE_RE.sub("_", text) or "default"


def grid_points(axes: Sequence[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
  """The cartesian product of the axes, first axis slowest."""
  names = [n for n, _ in axes]
  return [dict(zip(names, combo))
          for combo in itertools.product(*(v for _, v in axes))]


# What a seed binds in each run: initialisation/dropout and the data order.
SEED_PARAMETERS = ("train.seed", "train.data_seed")


def parse_seeds(text: Optional[str]) -> Optional[list[int]]:
  """``"0,1,2"`` -> ``[0, 1, 2]``; None or empty -> None (no seed axis).

  Raises:
    ValueError: naming a value that is not an integer, or one given twice.
  """
  if text is None or not str(text).strip():
    return None
  seeds = []
  for part in str(text).split(","):
    part = part.strip()
    try:
      seed = int(part)
    except ValueError:
      raise ValueError(f"--seeds {text!r}: {part!r} is not an integer; give "
                       "e.g. --seeds 0,1,2.") from None
    if seed in seeds:
      raise ValueError(f"--seeds {text!r}: {seed} is given twice.")
    seeds.append(seed)
  return seeds


def seed_run_name(point: Mapping[str, Any], seed: Optional[int]) -> str:
  """``run_name(point)``, with ``,seed=<s>`` appended when ``seed`` is set."""
  name = run_name(point)
  return name if seed is None else f"{name},seed={seed}"


@dataclasses.dataclass
class Resolution:
  """The resolved configuration (``gin_macros.resolved_parameters``) of the sweep's
  base (its files and bindings, no grid) and of every grid point, in order."""
  base: dict[str, Any]
  points: list[dict[str, Any]]

  def differences(self, i: int) -> dict[str, Any]:
    """Point ``i``'s resolved values that differ from the base."""
    return gin_macros.differences(self.base, self.points[i])

  def varied(self) -> list[str]:
    """Parameters whose resolved value is not the same in every point."""
    keys: list[str] = []
    for p in self.points:
      keys += [k for k in p if k not in keys]
    missing = object()
    return sorted(k for k in keys
                  if any(p.get(k, missing) != self.points[0].get(k, missing)
                         for p in self.points[1:]))


def format_values(values: Mapping[str, Any]) -> str:
  if not values:
    return "(the base configuration)"
  return ", ".join(f"{k}={v!r}" for k, v in values.items())


def _binding_keys(bindings: Sequence[str]) -> set[str]:
  keys = set()
  for b in bindings:
    try:
      keys.update(gin_macros.bound_keys(b))
    except SyntaxError:
      pass  # Named when the configuration is parsed.
  return keys


def resolve_grid(points: Sequence[Mapping[str, Any]], gin_files: Sequence[str],
                 bindings: Sequence[str], gin_search_paths: Sequence[str] = (),
                 model_dir: str = "sweep",
                 seeds: Optional[Sequence[int]] = None) -> Resolution:
  """Parses the configuration of the base and of every point, in this process.

  Nothing is trained, no data is registered and no model is built: each point is
  parsed exactly as its run's command parses it (``MODEL_DIR`` is ``model_dir`` for
  all, so only the grid tells them apart), then gin is cleared again.

  With ``seeds``, each point is resolved with its first seed bound (so a
  configuration that cannot take the seed parameters fails here), and
  ``train.seed`` / ``train.data_seed`` may not also be in ``bindings``.

  Raises:
    SweepError: an axis also bound by the sweep's bindings, a configuration error
      of the base, or of points (grouped: ``ADAPTR_SIZE: no configuration reads
      this macro; did you mean ADAPTER_SIZE? (grid points ADAPTR_SIZE=4,
      ADAPTR_SIZE=8)``).
  """
  names = list(points[0]) if points else []
  both = sorted(set(names) & _binding_keys(bindings))
  if seeds:
    twice = sorted(set(SEED_PARAMETERS) & (_binding_keys(bindings) | set(names)))
    if twice:
      raise SweepError(f"{', '.join(twice)}: bound by the sweep's --gin bindings "
                       "or --grid and by --seeds; give the seeds once.")
  if both:
    raise SweepError(f"{', '.join(both)}: both a --grid axis and a --gin binding "
                     "of the sweep; give it once.")
  base_bindings = list(bindings) + [f"MODEL_DIR = {gin_literal(model_dir)}"]

  def resolve(extra: Sequence[str], finalize: bool) -> dict[str, Any]:
    gin.clear_config()
    try:
      gin_utils.parse(gin_files, base_bindings + list(extra), gin_search_paths,
                      finalize=finalize)
      return gin_macros.resolved_parameters()
    finally:
      gin.clear_config()

  try:
    # Not finalized: the grid may be what binds a required macro.
    base = resolve([], finalize=False)
  except gin_utils.GinConfigError as e:
    raise SweepError(f"the sweep's configuration (without the grid): {e}") from e
  resolved, errors = [], {}
  for point in points:
    extra = [f"{k} = {gin_literal(v)}" for k, v in point.items()]
    if seeds:
      extra += [f"{k} = {gin_literal(seeds[0])}" for k in SEED_PARAMETERS]
    try:
      resolved.append(resolve(extra, finalize=True))
    except gin_macros.UnreadMacroError as e:
      for message in e.problems.values():
        errors.setdefault(message, []).append(run_name(point))
    except gin_utils.GinConfigError as e:
      errors.setdefault(str(e), []).append(run_name(point))
  if errors:
    raise SweepError("\n".join(
        f"{message} (grid point{'s' if len(runs) > 1 else ''} {', '.join(runs)})"
        for message, runs in errors.items()))
  return Resolution(base, resolved)


def check_points_differ(axes: Sequence[tuple[str, list[Any]]],
                        points: Sequence[Mapping[str, Any]],
                        resolution: Resolution) -> None:
  """Refuses a grid that would measure the same configuration twice.

  Raises:
    SweepError: naming each axis whose values change no configurable parameter,
      else each group of points that resolve to the same configuration.
  """
  problems = []
  for name, values in axes:
    if len(values) < 2:
      continue
    groups: dict[str, list[int]] = {}
    for i, point in enumerate(points):
      others = repr([(k, v) for k, v in point.items() if k != name])
      groups.setdefault(others, []).append(i)
    if not any(resolution.points[j] != resolution.points[g[0]]
               for g in groups.values() for j in g[1:]):
      problems.append(
          f"--grid {name}={values!r}: its values change no configurable parameter "
          f"(grid points {', '.join(run_name(p) for p in points)} differ only "
          f"in {name}'s value)")
  if not problems:
    same: list[list[int]] = []
    for i, config in enumerate(resolution.points):
      for group in same:
        if resolution.points[group[0]] == config:
          group.append(i)
          break
      else:
        same.append([i])
    problems += [
        f"grid points {', '.join(run_name(points[i]) for i in g)} resolve to the "
        "same configuration" for g in same if len(g) > 1]
  if problems:
    raise SweepError("\n".join(problems) + "\nThe sweep would measure nothing "
                     "between them; fix the grid.")


def point_runs(points, seeds):
  """``(point index, point, seed)`` per run; seed None without ``seeds``."""
  return [(i, p, s) for i, p in enumerate(points)
          for s in (seeds if seeds else [None])]
