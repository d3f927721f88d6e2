"""Running a sweep: one ``python -m hyper_tasks.train`` command per grid point (and
seed), run here one after another, in this process, or printed; and ``main``."""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import Any, Mapping, Optional, Sequence

import gin

from hyper_tasks.sweep.grid import (SEED_PARAMETERS, Resolution, SweepError,
                                    format_values, check_points_differ,
                                    gin_literal, grid_points, parse_grid,
                                    parse_seeds, point_runs, resolve_grid,
                                    seed_run_name)
from hyper_tasks.sweep.results import (aggregate_seeds, collect, headline, to_csv,
                                       to_markdown, write_results)
from hyper_tasks.train import __main__ as train_entry

_DESCRIPTION = "Ablation sweeps over gin macros: run a grid, then collect the evaluation reports."

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


def _run_in_process(cmd: Sequence[str]) -> int:
  """Runs a train command in this process (no interpreter start-up per run)."""
  gin.clear_config(clear_constants=True)
  try:
    return train_entry.main(list(cmd[3:]))
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
  for i, point, seed in point_runs(points, seeds):
    name = seed_run_name(point, seed)
    cmd = train_command(point, os.path.join(sweep_dir, name), gin_files, bindings,
                        gin_search_paths, seed=seed)
    line = shlex.join(cmd)
    if resolution is not None:
      diffs = resolution.differences(i)
      if seed is not None:  # resolved with the first seed; this run has its own
        diffs.update({k: seed for k in SEED_PARAMETERS})
      print(f"# {name}: {format_values(diffs)}", file=out)
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



TINY_EXAMPLE_ARGS = (
    "--gin_file=experiments/hint_finetune_sni.gin", "--gin_file=tiny.gin",
    "--gin.TRAIN_STEPS=3", "--gin.EVAL_PERIOD=3", "--gin.TrainEval.max_examples=2",
    "--grid=ADAPTER_SIZE=[4,8]", "--grid=NUM_PREFIX_TOKENS=[0,2]")


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m hyper_tasks.sweep", description=_DESCRIPTION)
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

