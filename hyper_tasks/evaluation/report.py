"""JSON evaluation reports and their TensorBoard scalars.

One evaluation run at one checkpoint produces one report, written to
`MODEL_DIR/eval_results/step_<N>.json`:

  {"step": int,                  # training step of the evaluated parameters
   "checkpoint": str | None,     # checkpoint path, None for in-training evals
   "config": str,                # gin operative config of the evaluation
   "generation": {...},          # metrics.compute_generation_metrics output
   "rank_classification": {...}, # rank_classification.evaluate_... output
   "hypernet_calls": int,        # instruction encodings actually computed
   "cache_hits": int,            # instruction encodings served from cache
   "num_examples": int,
   "controls": {name: {"generation": {...}, "rank_classification": {...}}}}

Absent sections are empty dicts, so readers never test for None. The file is
written atomically (temporary file in the same directory, then rename), so a
reader or a preempted job never sees half a report; re-evaluating a step
replaces its report.

`flatten_metrics` turns a report into TensorBoard scalar names:

  sni/rougeL, sni/exact_match
  sni/per_task/<task>/rougeL, sni/per_category/<category>/exact_match
  t0/<task>/<template>/accuracy            (also accuracy_per_token, _per_char)
  t0/<task>/accuracy_median                (mean / median / min / max)
  t0/accuracy_median                       (mean over tasks of the above)
  counters/hypernet_calls, counters/cache_hits, counters/num_examples
  controls/<control>/sni/rougeL, controls/<control>/t0/accuracy_median, ...

Name components are sanitised to `[A-Za-z0-9_.-]` (other characters become
`_`) so that a template called "does the pronoun refer to" or a task called
"super_glue/copa" does not add levels to the tag hierarchy.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, Mapping, Optional

import numpy as np

from hyper_tasks.evaluation import tensorboard

EVAL_RESULTS_DIR = "eval_results"
_REPORT_NAME_RE = re.compile(r"^step_(\d+)\.json$")
_UNSAFE_CHARS_RE = re.compile(r"[^A-Za-z0-9_.\-]")
# Per-group counts are bookkeeping, not metrics: kept in the JSON report, left
# out of TensorBoard.
_COUNT_KEYS = frozenset({"num_examples", "num_templates", "num_tasks"})
_COUNTERS = ("hypernet_calls", "cache_hits", "num_examples")


def make_report(
    step: int,
    *,
    checkpoint: Optional[str] = None,
    config: str = "",
    generation: Optional[Mapping[str, Any]] = None,
    rank_classification: Optional[Mapping[str, Any]] = None,
    hypernet_calls: int = 0,
    cache_hits: int = 0,
    num_examples: int = 0,
    controls: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> dict[str, Any]:
  """Builds a report dict in the schema above (and validates it)."""
  report = {
      "step": step,
      "checkpoint": checkpoint,
      "config": config,
      "generation": dict(generation or {}),
      "rank_classification": dict(rank_classification or {}),
      "hypernet_calls": hypernet_calls,
      "cache_hits": cache_hits,
      "num_examples": num_examples,
      "controls": {k: dict(v) for k, v in (controls or {}).items()},
  }
  validate_report(report)
  return report


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def validate_report(report: Mapping[str, Any]) -> None:
  """Raises ValueError if `report` does not follow the schema.

  Extra top-level keys are allowed, so that later versions can add fields
  without breaking readers of this version.
  """
  missing = [k for k in ("step", "checkpoint", "config", "generation",
                         "rank_classification", "hypernet_calls", "cache_hits",
                         "num_examples", "controls") if k not in report]
  if missing:
    raise ValueError(f"Evaluation report lacks keys {missing}.")
  for key in ("step",) + _COUNTERS:
    if not _is_int(report[key]) or report[key] < 0:
      raise ValueError(f"report[{key!r}] must be an int >= 0, got "
                       f"{report[key]!r}.")
  if report["checkpoint"] is not None and not isinstance(report["checkpoint"],
                                                         str):
    raise ValueError("report['checkpoint'] must be a str or None.")
  if not isinstance(report["config"], str):
    raise ValueError("report['config'] must be the gin operative config str.")
  for key in ("generation", "rank_classification", "controls"):
    if not isinstance(report[key], Mapping):
      raise ValueError(f"report[{key!r}] must be a dict.")
  for name, control in report["controls"].items():
    if not isinstance(control, Mapping):
      raise ValueError(f"report['controls'][{name!r}] must be a dict.")


def report_path(model_dir: str, step: int) -> str:
  """`MODEL_DIR/eval_results/step_<step>.json`."""
  return os.path.join(os.fspath(model_dir), EVAL_RESULTS_DIR,
                      f"step_{int(step)}.json")


def _json_default(value: Any) -> Any:
  # Metrics computed with numpy (or jax) arrive as numpy scalars.
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` so a reader never sees half of it: a
  temporary file in the same directory (made if missing), then a rename."""
  path = os.fspath(path)
  if tensorboard.is_remote_path(path):
    directory = os.path.dirname(path)
    # Object stores have no atomic rename, but writing a temporary object and
    # renaming it still never exposes a partial report under the final name.
    from tensorboard.compat import tf  # pylint: disable=g-import-not-at-top
    tf.io.gfile.makedirs(directory)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
      f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(
      dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())  # The data must be on disk before the rename is.
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports are meant to be shared.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_report(model_dir: str, report: Mapping[str, Any]) -> str:
  """Validates and atomically writes `report`; returns the file path."""
  validate_report(report)
  path = report_path(model_dir, report["step"])
  text = json.dumps(report, indent=2, default=_json_default)
  atomic_write_text(path, text + "\n")
  return path


def read_report(path: str) -> dict[str, Any]:
  """Reads and validates one report file."""
  if tensorboard.is_remote_path(path):
    from tensorboard.compat import tf  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(path, "r") as f:
      report = json.loads(f.read())
  else:
    with open(path, encoding="utf-8") as f:
      report = json.load(f)
  validate_report(report)
  return report


def read_reports(model_dir: str) -> dict[int, dict[str, Any]]:
  """All reports under `MODEL_DIR/eval_results/`, keyed and sorted by step."""
  directory = os.path.join(os.fspath(model_dir), EVAL_RESULTS_DIR)
  if tensorboard.is_remote_path(directory):
    from tensorboard.compat import tf  # pylint: disable=g-import-not-at-top
    names = (tf.io.gfile.listdir(directory)
             if tf.io.gfile.isdir(directory) else [])
  else:
    names = os.listdir(directory) if os.path.isdir(directory) else []
  matches = [_REPORT_NAME_RE.match(name) for name in names]
  steps = sorted(int(m.group(1)) for m in matches if m)
  return {step: read_report(report_path(model_dir, step)) for step in steps}


def _component(name: Any) -> str:
  return _UNSAFE_CHARS_RE.sub("_", str(name)) or "_"


class _FlatMetrics:
  """A dict builder that refuses two metrics mapping to the same tag."""

  def __init__(self):
    self.values: dict[str, float] = {}

  def add(self, parts: tuple[Any, ...], value: Any) -> None:
    name = "/".join(_component(p) for p in parts)
    if name in self.values:
      raise ValueError(
          f"Two metrics map to the TensorBoard tag {name!r} after sanitising "
          "names; rename a task or template.")
    self.values[name] = float(value)

  def add_metrics(self, prefix: tuple[Any, ...],
                  metrics: Mapping[str, Any]) -> None:
    for key, value in metrics.items():
      if key not in _COUNT_KEYS and not isinstance(value, Mapping):
        self.add(prefix + (key,), value)


def _flatten_generation(out: _FlatMetrics, prefix: tuple[Any, ...],
                        generation: Mapping[str, Any]) -> None:
  out.add_metrics(prefix, generation.get("overall", {}))
  for group in ("per_task", "per_category"):
    for name, metrics in generation.get(group, {}).items():
      out.add_metrics(prefix + (group, name), metrics)


def _flatten_rank(out: _FlatMetrics, prefix: tuple[Any, ...],
                  rank: Mapping[str, Any]) -> None:
  for task, templates in rank.get("per_template", {}).items():
    for template, metrics in templates.items():
      out.add_metrics(prefix + (task, template), metrics)

  def add_statistics(where: tuple[Any, ...], entry: Mapping[str, Any]) -> None:
    # {"accuracy": {"median": x}} -> <where>/accuracy_median: one level below
    # the task, beside (not among) its templates.
    for metric, stats in entry.items():
      if isinstance(stats, Mapping):
        for stat, value in stats.items():
          out.add(where + (f"{metric}_{stat}",), value)

  for task, entry in rank.get("per_task", {}).items():
    add_statistics(prefix + (task,), entry)
  add_statistics(prefix, rank.get("overall", {}))


def _flatten_sections(out: _FlatMetrics, prefix: tuple[Any, ...],
                      sections: Mapping[str, Any], generation_prefix: str,
                      rank_prefix: str) -> None:
  if sections.get("generation"):
    _flatten_generation(out, prefix + (generation_prefix,),
                        sections["generation"])
  if sections.get("rank_classification"):
    _flatten_rank(out, prefix + (rank_prefix,), sections["rank_classification"])


def flatten_metrics(report: Mapping[str, Any], *,
                    generation_prefix: str = "sni",
                    rank_prefix: str = "t0") -> dict[str, float]:
  """Flattens a report into `{tensorboard_tag: value}` (see module docstring).

  Args:
    report: a report dict (see `make_report`).
    generation_prefix: first tag component of generation metrics.
    rank_prefix: first tag component of rank-classification metrics.

  Returns:
    Scalars keyed by tag, in a deterministic order.

  Raises:
    ValueError: two metrics sanitise to the same tag.
  """
  out = _FlatMetrics()
  _flatten_sections(out, (), report, generation_prefix, rank_prefix)
  for counter in _COUNTERS:
    if counter in report:
      out.add(("counters", counter), report[counter])
  for name, control in report.get("controls", {}).items():
    _flatten_sections(out, ("controls", name), control, generation_prefix,
                      rank_prefix)
  return out.values


def write_scalars(logdir: str, step: int,
                  flat_metrics: Mapping[str, float]) -> str:
  """Writes `flat_metrics` at `step` to a new event file in `logdir`.

  For repeated logging keep one `tensorboard.SummaryWriter` open instead; this
  helper is for one-off writes such as a standalone evaluation job.

  Returns:
    The event file path.
  """
  with tensorboard.SummaryWriter(logdir) as writer:
    writer.scalars(flat_metrics, step)
    return writer.path
