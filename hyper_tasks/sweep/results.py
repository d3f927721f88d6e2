"""Collecting a sweep: each run's newest evaluation report -> one table (markdown,
CSV, TensorBoard hparams), with seeds aggregated to mean and standard deviation."""
from __future__ import annotations

import csv
import fnmatch
import io
import os
from typing import Any, Mapping, Optional, Sequence

from hyper_tasks.evaluation import report as report_lib
from hyper_tasks.evaluation import tensorboard
from hyper_tasks.sweep.grid import Resolution, point_runs, seed_run_name

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
  for i, point, seed in point_runs(points, seeds):
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
