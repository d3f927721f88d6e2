"""Ablation sweeps over gin macros: run a grid, then collect the evaluation reports.

    python -m hyper_tasks.sweep --gin_file=experiments/hint_finetune_sni.gin \\
        --gin_file=tiny.gin --grid 'ADAPTER_SIZE=[8,64]' \\
        --grid 'NUM_PREFIX_TOKENS=[0,30]' --sweep_dir=/path/to/sweep

Every point of the grid is one training run, ``python -m hyper_tasks.train`` with the
sweep's gin files and bindings plus one ``--gin.MACRO=value`` per grid axis, written to
``<sweep_dir>/<run name>`` (its ``MODEL_DIR``). Runs go one after another on this
machine, or, with ``--print_only``, the commands are printed for a cluster scheduler.
``--collect_only`` skips running. Collection reads each run's newest report in
``MODEL_DIR/eval_results/`` and writes ``results.md`` and ``results.csv`` in the sweep
directory (one row per run: the grid values, the resolved parameter values that vary
between the runs, then the metrics), plus TensorBoard hparams under
``<sweep_dir>/hparams/<run name>`` so the HParams dashboard compares the runs.

Before anything runs (or is printed, or collected) the sweep resolves the gin
configuration of every point in this process, without training
(:func:`resolve_grid`): a macro nothing reads is an error naming it
(``hyper_tasks.gin_macros``), and so are an axis whose values change no configurable
parameter and two points that resolve to the same configuration
(:func:`check_points_differ`), so a sweep cannot silently measure nothing.
``--print_only`` shows, per point, the resolved values that differ from the sweep's
base configuration (its files and bindings without the grid).

Seeds. ``--seeds 0,1,2`` runs every grid point once per seed, in
``<sweep_dir>/<run name>,seed=<s>``, with ``--gin.train.seed=<s>`` (initialisation,
dropout) and ``--gin.train.data_seed=<s>`` (data order); the grid checks above apply
to the points without the seed (replicas of a point differing only by seed are not
duplicates). ``results.md`` / ``results.csv`` then hold one row per grid point: every
numeric metric is the mean over the seeds that have a report, ``<metric>_std`` its
sample standard deviation (0 for one seed), ``seeds`` the seeds collected;
``results_per_seed.csv`` keeps one row per run.

The design keeps the sweep a thin layer over the train entry point: a run of a sweep
is exactly the command a user would type, so a failing point can be re-run by hand.
"""
from __future__ import annotations

import argparse
import ast
import csv
import dataclasses
import fnmatch
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Mapping, Optional, Sequence

from hyper_tasks.evaluation import report as report_lib
from hyper_tasks.evaluation import tensorboard

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
  from hyper_tasks import gin_macros  # pylint: disable=g-import-not-at-top
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


def train_command(point: Mapping[str, Any], model_dir: str,
                  gin_files: Sequence[str], bindings: Sequence[str],
                  gin_search_paths: Sequence[str] = (),
                  python: str = sys.executable,
                  module: str = "hyper_tasks.train",
                  seed: Optional[int] = None) -> list[str]:
  """The argv of one run (the sweep's own bindings first, the grid's last, then
  the seed's ``train.seed`` and ``train.data_seed``)."""
  cmd = [python, "-m", module]
  cmd += [f"--gin_file={f}" for f in gin_files]
  cmd += [f"--gin_search_paths={p}" for p in gin_search_paths]
  cmd += [f"--gin.{b}" for b in bindings]
  cmd.append(f"--gin.MODEL_DIR={gin_literal(model_dir)}")
  cmd += [f"--gin.{k}={gin_literal(v)}" for k, v in point.items()]
  if seed is not None:
    cmd += [f"--gin.{k}={gin_literal(seed)}" for k in SEED_PARAMETERS]
  return cmd


@dataclasses.dataclass
class Resolution:
  """The resolved configuration (``gin_macros.resolved_parameters``) of the sweep's
  base (its files and bindings, no grid) and of every grid point, in order."""
  base: dict[str, Any]
  points: list[dict[str, Any]]

  def differences(self, i: int) -> dict[str, Any]:
    """Point ``i``'s resolved values that differ from the base."""
    from hyper_tasks import gin_macros  # pylint: disable=g-import-not-at-top
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


def _format_values(values: Mapping[str, Any]) -> str:
  if not values:
    return "(the base configuration)"
  return ", ".join(f"{k}={v!r}" for k, v in values.items())


def _binding_keys(bindings: Sequence[str]) -> set[str]:
  from hyper_tasks import gin_macros  # pylint: disable=g-import-not-at-top
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
  # pylint: disable=g-import-not-at-top
  import gin
  from hyper_tasks import gin_macros
  from hyper_tasks import gin_utils
  # pylint: enable=g-import-not-at-top
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


def _run_in_process(cmd: Sequence[str]) -> int:
  """Runs a train command in this process (no interpreter start-up per run)."""
  import gin  # pylint: disable=g-import-not-at-top
  from hyper_tasks.train.__main__ import main as train_main  # pylint: disable=g-import-not-at-top
  gin.clear_config(clear_constants=True)
  try:
    return train_main(list(cmd[3:]))
  except Exception as e:  # pylint: disable=broad-except
    print(f"[sweep] {type(e).__name__}: {e}", file=sys.stderr)
    return 1
  finally:
    gin.clear_config(clear_constants=True)


def run_grid(points: Sequence[Mapping[str, Any]], sweep_dir: str,
             gin_files: Sequence[str], bindings: Sequence[str],
             gin_search_paths: Sequence[str] = (), print_only: bool = False,
             out=None, in_process: bool = False,
             resolution: Optional[Resolution] = None,
             seeds: Optional[Sequence[int]] = None) -> dict[str, int]:
  """Runs (or prints) every point (once per seed of ``seeds``); returns
  ``{run name: exit code}``.

  With ``resolution``, each command is preceded by a ``# <run name>: ...`` line of
  the point's resolved values that differ from the base configuration.

  A failed run does not stop the sweep: its code is recorded and it has no row in
  the results. Re-running a sweep is cheap: each run resumes from its own newest
  checkpoint in its ``MODEL_DIR``.
  """
  out = sys.stdout if out is None else out
  codes = {}
  for i, point, seed in _point_runs(points, seeds):
    name = seed_run_name(point, seed)
    cmd = train_command(point, os.path.join(sweep_dir, name), gin_files, bindings,
                        gin_search_paths, seed=seed)
    line = shlex.join(cmd)
    if resolution is not None:
      diffs = resolution.differences(i)
      if seed is not None:  # resolved with the first seed; this run has its own
        diffs.update({k: seed for k in SEED_PARAMETERS})
      print(f"# {name}: {_format_values(diffs)}", file=out)
    if print_only:
      print(line, file=out)
      continue
    print(f"[sweep] {name}: {line}", file=out, flush=True)
    if in_process:
      codes[name] = _run_in_process(cmd)
    else:
      codes[name] = subprocess.run(cmd, check=False).returncode
    if codes[name]:
      print(f"[sweep] {name} failed with exit code {codes[name]}", file=out)
  return codes


def _point_runs(points, seeds):
  """``(point index, point, seed)`` per run; seed None without ``seeds``."""
  return [(i, p, s) for i, p in enumerate(points)
          for s in (seeds if seeds else [None])]


def _matches(name: str, patterns: Optional[Sequence[str]]) -> bool:
  return not patterns or any(fnmatch.fnmatch(name, p) for p in patterns)


def collect(sweep_dir: str, points: Sequence[Mapping[str, Any]],
            metrics: Optional[Sequence[str]] = None,
            resolution: Optional[Resolution] = None,
            seeds: Optional[Sequence[int]] = None) -> list[dict[str, Any]]:
  """One row per run that has a report: grid values, the resolved parameter values
  that vary between the points (with ``resolution``), ``seed`` (with ``seeds``),
  ``step``, then metrics. :func:`aggregate_seeds` folds the seeds.

  Args:
    metrics: glob patterns over flattened metric names (``report.flatten_metrics``);
      None keeps all.
    resolution: :func:`resolve_grid` of ``points``.
  """
  varied = resolution.varied() if resolution is not None else []
  rows = []
  for i, point, seed in _point_runs(points, seeds):
    name = seed_run_name(point, seed)
    reports = report_lib.read_reports(os.path.join(sweep_dir, name))
    if not reports:
      continue
    step = max(reports)
    flat = report_lib.flatten_metrics(reports[step])
    row = {"run": name, **point}
    row.update({k: resolution.points[i].get(k) for k in varied})
    if seed is not None:
      row["seed"] = seed
    row["step"] = step
    row.update({k: v for k, v in flat.items() if _matches(k, metrics)})
    rows.append(row)
  return rows


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def aggregate_seeds(rows: Sequence[Mapping[str, Any]],
                    grid_names: Sequence[str]) -> list[dict[str, Any]]:
  """Per-seed rows (:func:`collect` with seeds) -> one row per grid point.

  A point's row keeps ``run`` (the point's name, without the seed), its
  ``grid_names`` values, ``seeds`` (the seeds with a report, e.g. ``"0,2"``),
  ``num_seeds`` and ``step`` (the largest); each numeric metric becomes its mean
  over those seeds and ``<metric>_std`` the sample standard deviation (ddof 1; 0
  with one seed). A metric some seeds lack averages the seeds that have it.
  """
  groups: dict[str, list[Mapping[str, Any]]] = {}
  for row in rows:
    name = row["run"].rsplit(",seed=", 1)[0] if "seed" in row else row["run"]
    groups.setdefault(name, []).append(row)
  fixed = set(grid_names) | {"run", "seed", "step"}
  out = []
  for name, group in groups.items():
    agg: dict[str, Any] = {"run": name}
    agg.update({k: group[0][k] for k in grid_names if k in group[0]})
    agg["seeds"] = ",".join(str(r.get("seed")) for r in group)
    agg["num_seeds"] = len(group)
    agg["step"] = max(r["step"] for r in group)
    metrics: list[str] = []
    for r in group:
      metrics += [k for k in r if k not in fixed and k not in metrics]
    for k in metrics:
      values = [float(r[k]) for r in group if _is_number(r.get(k))]
      if not values:
        continue
      mean = sum(values) / len(values)
      var = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)
             if len(values) > 1 else 0.0)
      agg[k] = mean
      agg[f"{k}_std"] = var ** 0.5
    out.append(agg)
  return out


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  cols: list[str] = []
  for row in rows:
    cols += [c for c in row if c not in cols]
  return cols


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return "" if value is None else str(value)


def headline(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Rows cut to the aggregate metrics (names with at most one ``/``, e.g.
  ``sni/rougeL``, ``t0/accuracy_median``), for a readable table; the CSV keeps all."""
  return [{k: v for k, v in r.items() if k.count("/") <= 1 and
           not k.startswith("counters/")} for r in rows]


def to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
  """A GitHub markdown table (empty cells where a run lacks a metric)."""
  if not rows:
    return "(no run has an evaluation report yet)\n"
  cols = _columns(rows)
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=_columns(rows), lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return buf.getvalue()


def write_results(sweep_dir: str, rows: Sequence[Mapping[str, Any]],
                  grid_names: Sequence[str], all_metrics_in_markdown: bool = False
                  ) -> dict[str, str]:
  """Writes results.md (headline metrics unless ``all_metrics_in_markdown``),
  results.csv (every metric) and per-run TensorBoard hparams.

  Args:
    grid_names: the row keys that are hyperparameters (grid axes and resolved
      parameter values); the other keys but ``run`` and ``step`` are metrics.
  """
  os.makedirs(sweep_dir, exist_ok=True)
  paths = {"markdown": os.path.join(sweep_dir, "results.md"),
           "csv": os.path.join(sweep_dir, "results.csv")}
  with open(paths["markdown"], "w", encoding="utf-8") as f:
    f.write(to_markdown(rows if all_metrics_in_markdown else headline(rows)))
  with open(paths["csv"], "w", encoding="utf-8") as f:
    f.write(to_csv(rows) if rows else "")
  hparams_root = os.path.join(sweep_dir, "hparams")
  for row in rows:
    with tensorboard.SummaryWriter(os.path.join(hparams_root, row["run"])) as w:
      w.hparams({k: row[k] for k in grid_names if k in row})
      w.scalars({k: v for k, v in row.items()
                 if k not in grid_names and k not in ("run", "step")},
                row["step"])
  paths["hparams"] = hparams_root
  return paths


# A 2x2 grid of a tiny HINT on the embedded SNI-format tasks, evaluated at its last
# step: the results notebook's default and the test suite's end-to-end check.
TINY_EXAMPLE_ARGS = (
    "--gin_file=experiments/hint_finetune_sni.gin", "--gin_file=tiny.gin",
    "--gin.TRAIN_STEPS=3", "--gin.EVAL_PERIOD=3", "--gin.TrainEval.max_examples=2",
    "--grid=ADAPTER_SIZE=[4,8]", "--grid=NUM_PREFIX_TOKENS=[0,2]")


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m hyper_tasks.sweep", description=__doc__.split("\n\n")[0])
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin files of every run (repeatable)")
  parser.add_argument("--gin_search_paths", action="append", default=[])
  parser.add_argument("--gin", action="append", default=[], dest="bindings",
                      metavar="BINDING", help="extra binding of every run, "
                      "e.g. --gin 'TRAIN_STEPS=100'")
  parser.add_argument("--grid", action="append", default=[], required=True,
                      help="NAME=[v1,v2,...] (repeatable; the grid is the product)")
  parser.add_argument("--sweep_dir", required=True)
  parser.add_argument("--print_only", action="store_true",
                      help="print the commands (for a cluster) instead of running")
  parser.add_argument("--collect_only", action="store_true")
  parser.add_argument("--in_process", action="store_true",
                      help="run the points inside this process (small local sweeps)")
  parser.add_argument("--metrics", action="append", default=None,
                      help="glob over metric names to keep in the table")
  parser.add_argument("--seeds", default=None,
                      help="comma-separated seeds, e.g. 0,1,2: every grid point "
                      "runs once per seed (train.seed and train.data_seed); the "
                      "table shows each metric's mean and <metric>_std")
  # Accept t5x-style --gin.NAME=value for the sweep-wide bindings too.
  argv = list(sys.argv[1:] if argv is None else argv)
  argv = [f"--gin={a[len('--gin.'):]}" if a.startswith("--gin.") else a
          for a in argv]
  args = parser.parse_args(argv)
  try:
    axes = parse_grid(args.grid)
    seeds = parse_seeds(args.seeds)
  except ValueError as e:
    parser.error(str(e))
  points = grid_points(axes)
  search_paths = [p for group in args.gin_search_paths for p in group.split(",")
                  if p]
  try:
    resolution = resolve_grid(points, args.gin_file, args.bindings, search_paths,
                              model_dir=args.sweep_dir, seeds=seeds)
    check_points_differ(axes, points, resolution)
  except SweepError as e:
    print(f"[sweep] error: {e}", file=sys.stderr)
    return 2
  if not args.collect_only:
    codes = run_grid(points, args.sweep_dir, args.gin_file, args.bindings,
                     args.gin_search_paths, args.print_only,
                     in_process=args.in_process, resolution=resolution,
                     seeds=seeds)
    if args.print_only:
      return 0
  else:
    codes = {}
  rows = collect(args.sweep_dir, points, args.metrics, resolution, seeds)
  grid_names = [n for n, _ in axes] + resolution.varied()
  if seeds:
    os.makedirs(args.sweep_dir, exist_ok=True)
    with open(os.path.join(args.sweep_dir, "results_per_seed.csv"), "w",
              encoding="utf-8") as f:
      f.write(to_csv(rows) if rows else "")
    rows = aggregate_seeds(rows, grid_names)
    grid_names = grid_names + ["seeds", "num_seeds"]
  paths = write_results(args.sweep_dir, rows, grid_names,
                        all_metrics_in_markdown=args.metrics is not None)
  print(to_markdown(rows if args.metrics is not None else headline(rows)))
  print(f"[sweep] {len(rows)}/{len(points)} {'points' if seeds else 'runs'} collected -> {paths['markdown']}, "
        f"{paths['csv']}; TensorBoard hparams: {paths['hparams']}")
  failed = [n for n, c in codes.items() if c]
  if failed:
    print(f"[sweep] failed runs: {failed}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
