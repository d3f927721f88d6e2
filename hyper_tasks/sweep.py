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
directory (one row per run: the grid values, then the metrics), plus TensorBoard
hparams under ``<sweep_dir>/hparams/<run name>`` so the HParams dashboard compares
the runs.

The design keeps the sweep a thin layer over the train entry point: a run of a sweep
is exactly the command a user would type, so a failing point can be re-run by hand.
"""
from __future__ import annotations

import argparse
import ast
import csv
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


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[Any]]]:
  """``["ADAPTER_SIZE=[8,64]", ...]`` -> ``[("ADAPTER_SIZE", [8, 64]), ...]``.

  Values are Python literals (numbers, strings, booleans, None, tuples).

  Raises:
    ValueError: naming the malformed spec.
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
    axes.append((name, list(parsed)))
  return axes


def gin_literal(value: Any) -> str:
  """A Python value as gin binding text (gin reads Python literals)."""
  return repr(value)


def run_name(point: Mapping[str, Any]) -> str:
  """A filesystem-safe, readable name: ``ADAPTER_SIZE=8,NUM_PREFIX_TOKENS=0``."""
  text = ",".join(f"{k}={v}" for k, v in point.items())
  return _SAFE_RE.sub("_", text) or "default"


def grid_points(axes: Sequence[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
  """The cartesian product of the axes, first axis slowest."""
  names = [n for n, _ in axes]
  return [dict(zip(names, combo))
          for combo in itertools.product(*(v for _, v in axes))]


def train_command(point: Mapping[str, Any], model_dir: str,
                  gin_files: Sequence[str], bindings: Sequence[str],
                  gin_search_paths: Sequence[str] = (),
                  python: str = sys.executable,
                  module: str = "hyper_tasks.train") -> list[str]:
  """The argv of one run (the sweep's own bindings first, the grid's last)."""
  cmd = [python, "-m", module]
  cmd += [f"--gin_file={f}" for f in gin_files]
  cmd += [f"--gin_search_paths={p}" for p in gin_search_paths]
  cmd += [f"--gin.{b}" for b in bindings]
  cmd.append(f"--gin.MODEL_DIR={gin_literal(model_dir)}")
  cmd += [f"--gin.{k}={gin_literal(v)}" for k, v in point.items()]
  return cmd


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
             out=sys.stdout, in_process: bool = False) -> dict[str, int]:
  """Runs (or prints) every point; returns ``{run name: exit code}``.

  A failed run does not stop the sweep: its code is recorded and it has no row in
  the results. Re-running a sweep is cheap: each run resumes from its own newest
  checkpoint in its ``MODEL_DIR``.
  """
  codes = {}
  for point in points:
    name = run_name(point)
    cmd = train_command(point, os.path.join(sweep_dir, name), gin_files, bindings,
                        gin_search_paths)
    line = shlex.join(cmd)
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


def _matches(name: str, patterns: Optional[Sequence[str]]) -> bool:
  return not patterns or any(fnmatch.fnmatch(name, p) for p in patterns)


def collect(sweep_dir: str, points: Sequence[Mapping[str, Any]],
            metrics: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
  """One row per run that has a report: grid values, ``step``, then metrics.

  Args:
    metrics: glob patterns over flattened metric names (``report.flatten_metrics``);
      None keeps all.
  """
  rows = []
  for point in points:
    reports = report_lib.read_reports(os.path.join(sweep_dir, run_name(point)))
    if not reports:
      continue
    step = max(reports)
    flat = report_lib.flatten_metrics(reports[step])
    row = {"run": run_name(point), **point, "step": step}
    row.update({k: v for k, v in flat.items() if _matches(k, metrics)})
    rows.append(row)
  return rows


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
  results.csv (every metric) and per-run TensorBoard hparams."""
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
      w.hparams({k: row[k] for k in grid_names})
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
  # Accept t5x-style --gin.NAME=value for the sweep-wide bindings too.
  argv = list(sys.argv[1:] if argv is None else argv)
  argv = [f"--gin={a[len('--gin.'):]}" if a.startswith("--gin.") else a
          for a in argv]
  args = parser.parse_args(argv)
  try:
    axes = parse_grid(args.grid)
  except ValueError as e:
    parser.error(str(e))
  points = grid_points(axes)
  if not args.collect_only:
    codes = run_grid(points, args.sweep_dir, args.gin_file, args.bindings,
                     args.gin_search_paths, args.print_only,
                     in_process=args.in_process)
    if args.print_only:
      return 0
  else:
    codes = {}
  rows = collect(args.sweep_dir, points, args.metrics)
  paths = write_results(args.sweep_dir, rows, [n for n, _ in axes],
                        all_metrics_in_markdown=args.metrics is not None)
  print(to_markdown(rows if args.metrics is not None else headline(rows)))
  print(f"[sweep] {len(rows)}/{len(points)} runs collected -> {paths['markdown']}, "
        f"{paths['csv']}; TensorBoard hparams: {paths['hparams']}")
  failed = [n for n, c in codes.items() if c]
  if failed:
    print(f"[sweep] failed runs: {failed}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
