"""T0-style rank classification from per-choice log-likelihood scores.

T0 evaluates multiple-choice prompts by scoring every answer choice as a target
and predicting the choice the model finds most likely; no generation is
involved. The model side (`score_batch`, summed target log-likelihood) turns
each (example, choice) pair into one row:

  {"example_id": ..., "task": str, "template": str, "choice_index": int,
   "is_correct": bool, "score": float, "num_target_tokens": int,
   "target_text": str}

and this module, pure Python + numpy, turns rows into predictions and
accuracies. An example is identified by `(task, template, example_id)`: the same
instance rendered by different templates is a different example, so
`example_id` only needs to be unique within a (task, template).

Decision rules (`RULES`), each reported under its own metric name:

- `sum` -> `accuracy`: highest summed log-likelihood. This is T0's rule.
- `per_token` -> `accuracy_per_token`: score / num_target_tokens.
- `per_char` -> `accuracy_per_char`: score / len(target_text) in characters
  (as GPT-3 style evaluations do; tokenizer-independent).

The summed rule favours short choices; the normalised rules remove that bias,
and reporting all three shows how much a result depends on it.

Ties are broken by the LOWEST choice index (deterministic and independent of
row order). An example counts as correct when its predicted choice has
`is_correct`; several correct choices are allowed, at least one is required.

Aggregation follows how P3/T0 results are reported: accuracy per
(task, template); per task the mean / median / min / max over its templates;
overall, the mean over tasks of each of those per-task statistics (so
`overall["accuracy"]["median"]` is "median over templates, averaged over
datasets"). Accuracies are percentages in [0, 100], on the same scale as the
SNI generation metrics that share the evaluation report.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np

RULES = ("sum", "per_token", "per_char")
METRIC_NAMES = {
    "sum": "accuracy",
    "per_token": "accuracy_per_token",
    "per_char": "accuracy_per_char",
}
STATISTICS = ("mean", "median", "min", "max")
REQUIRED_FIELDS = ("example_id", "task", "template", "choice_index",
                   "is_correct", "score", "num_target_tokens", "target_text")


@dataclasses.dataclass(frozen=True)
class ScoredExample:
  """All choices of one example, sorted by choice index.

  Attributes:
    task: task (dataset) name.
    template: prompt template name.
    example_id: id of the example within (task, template).
    choice_indices: [C] int, strictly increasing 0..C-1.
    scores: [C] float, summed target log-likelihood per choice.
    num_target_tokens: [C] int > 0.
    num_target_chars: [C] int > 0.
    is_correct: [C] bool, at least one True.
  """
  task: str
  template: str
  example_id: Hashable
  choice_indices: np.ndarray
  scores: np.ndarray
  num_target_tokens: np.ndarray
  num_target_chars: np.ndarray
  is_correct: np.ndarray

  def rule_scores(self, rule: str) -> np.ndarray:
    """[C] the quantity `rule` maximises."""
    if rule == "sum":
      return self.scores
    if rule == "per_token":
      return self.scores / self.num_target_tokens
    if rule == "per_char":
      return self.scores / self.num_target_chars
    raise ValueError(f"Unknown rule {rule!r}; expected one of {RULES}.")

  def predict(self, rule: str = "sum") -> int:
    """The predicted choice index; ties go to the lowest choice index."""
    # np.argmax returns the first maximum and choices are sorted by index, so
    # this is the lowest-index tie-break.
    return int(self.choice_indices[int(np.argmax(self.rule_scores(rule)))])

  def is_prediction_correct(self, rule: str = "sum") -> bool:
    # choice_indices == arange(C), so a choice index is also its position.
    return bool(self.is_correct[self.predict(rule)])


def _as_text(value: Any) -> str:
  # Characters, not bytes: seqio numpy iterators yield utf-8 bytes.
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _describe(key: tuple[str, str, Hashable]) -> str:
  task, template, example_id = key
  return f"example_id={example_id!r} (task={task!r}, template={template!r})"


def _build_example(key: tuple[str, str, Hashable],
                   rows: Sequence[Mapping[str, Any]]) -> ScoredExample:
  """Validates one example's rows and packs them into a ScoredExample."""
  where = _describe(key)
  if not rows:
    raise ValueError(f"{where} has no choices.")
  rows = sorted(rows, key=lambda r: int(r["choice_index"]))
  indices = np.array([int(r["choice_index"]) for r in rows], dtype=np.int64)
  counts = collections.Counter(indices.tolist())
  duplicates = sorted(i for i, c in counts.items() if c > 1)
  if duplicates:
    raise ValueError(f"{where} has duplicate choice indices {duplicates}.")
  if not np.array_equal(indices, np.arange(len(rows))):
    # A gap means a choice was never scored (e.g. dropped by batching); its
    # absence would silently change the prediction.
    raise ValueError(
        f"{where} has choice indices {indices.tolist()}, expected "
        f"0..{len(rows) - 1} without gaps.")
  scores = np.array([float(r["score"]) for r in rows], dtype=np.float64)
  if np.isnan(scores).any():
    raise ValueError(f"{where} has a NaN score.")
  is_correct = np.array([bool(r["is_correct"]) for r in rows])
  if not is_correct.any():
    raise ValueError(f"{where} has no correct choice.")
  num_tokens = np.array([int(r["num_target_tokens"]) for r in rows],
                        dtype=np.int64)
  num_chars = np.array([len(_as_text(r["target_text"])) for r in rows],
                       dtype=np.int64)
  if (num_tokens <= 0).any():
    raise ValueError(f"{where} has a choice with num_target_tokens <= 0.")
  if (num_chars <= 0).any():
    raise ValueError(f"{where} has a choice with an empty target_text.")
  return ScoredExample(
      task=key[0], template=key[1], example_id=key[2],
      choice_indices=indices, scores=scores, num_target_tokens=num_tokens,
      num_target_chars=num_chars, is_correct=is_correct)


def group_rows(
    rows: Iterable[Mapping[str, Any]],
    expected_examples: Iterable[tuple[str, str, Hashable]] | None = None,
) -> list[ScoredExample]:
  """Groups (example, choice) rows into validated examples.

  Args:
    rows: one mapping per (example, choice) with the keys in `REQUIRED_FIELDS`
      (extra keys are ignored).
    expected_examples: optional `(task, template, example_id)` keys of every
      example that was meant to be scored. Rows can only show examples that have
      at least one choice, so pass these to detect examples whose choices were
      all lost (or that had none).

  Returns:
    Examples in order of first appearance (expected-but-missing ones raise).

  Raises:
    ValueError: a row lacks a field; an example has no choices, duplicate or
      missing choice indices, no correct choice, a NaN score or an empty target.
  """
  grouped: dict[tuple[str, str, Hashable], list[Mapping[str, Any]]] = {}
  for n, row in enumerate(rows):
    missing = [f for f in REQUIRED_FIELDS if f not in row]
    if missing:
      raise ValueError(f"row {n} lacks fields {missing}.")
    key = (str(row["task"]), str(row["template"]), row["example_id"])
    grouped.setdefault(key, []).append(row)
  if expected_examples is not None:
    for key in expected_examples:
      key = (str(key[0]), str(key[1]), key[2])
      if key not in grouped:
        raise ValueError(f"{_describe(key)} has no choices.")
  return [_build_example(key, group) for key, group in grouped.items()]


def predict_choices(
    rows: Iterable[Mapping[str, Any]],
    rules: Sequence[str] = RULES,
    expected_examples: Iterable[tuple[str, str, Hashable]] | None = None,
) -> list[dict[str, Any]]:
  """Per-example predictions under each rule.

  Args:
    rows: see `group_rows`.
    rules: subset of `RULES`.
    expected_examples: see `group_rows`.

  Returns:
    One dict per example: `task`, `template`, `example_id`,
    `predictions` ({rule: choice index}) and `correct` ({rule: bool}).
  """
  return [{
      "task": ex.task,
      "template": ex.template,
      "example_id": ex.example_id,
      "predictions": {rule: ex.predict(rule) for rule in rules},
      "correct": {rule: ex.is_prediction_correct(rule) for rule in rules},
  } for ex in group_rows(rows, expected_examples)]


def _statistics(values: Sequence[float]) -> dict[str, float]:
  values = np.asarray(values, dtype=np.float64)
  return {
      "mean": float(np.mean(values)),
      "median": float(np.median(values)),
      "min": float(np.min(values)),
      "max": float(np.max(values)),
  }


def evaluate_rank_classification(
    rows: Iterable[Mapping[str, Any]],
    rules: Sequence[str] = RULES,
    expected_examples: Iterable[tuple[str, str, Hashable]] | None = None,
) -> dict[str, Any]:
  """Accuracy per (task, template), per task and overall.

  Args:
    rows: see `group_rows`.
    rules: subset of `RULES`; each adds its `METRIC_NAMES[rule]` metric.
    expected_examples: see `group_rows`.

  Returns:
    A JSON-serialisable dict (accuracies in [0, 100]):
      {"per_template": {task: {template: {metric: acc, "num_examples": n}}},
       "per_task": {task: {metric: {"mean", "median", "min", "max"},
                           "num_templates": k, "num_examples": n}},
       "overall": {metric: {stat: mean over tasks of per_task stat},
                   "num_tasks": t, "num_templates": k, "num_examples": n}}
    Tasks and templates are sorted by name.

  Raises:
    ValueError: invalid rows (see `group_rows`), no rows, or an unknown rule.
  """
  unknown = [r for r in rules if r not in METRIC_NAMES]
  if unknown or not rules:
    raise ValueError(
        f"rules must be a non-empty subset of {RULES}, got {rules}.")
  examples = group_rows(rows, expected_examples)
  if not examples:
    raise ValueError("evaluate_rank_classification got no rows.")

  # correct[(task, template)][rule] -> list of 0/1 per example.
  correct: dict[tuple[str, str], dict[str, list[float]]] = (
      collections.defaultdict(lambda: collections.defaultdict(list)))
  for ex in examples:
    for rule in rules:
      correct[(ex.task, ex.template)][rule].append(
          float(ex.is_prediction_correct(rule)))

  per_template: dict[str, dict[str, dict[str, Any]]] = {}
  for (task, template), by_rule in sorted(correct.items()):
    entry: dict[str, Any] = {
        METRIC_NAMES[rule]:
            100.0 * math.fsum(by_rule[rule]) / len(by_rule[rule])
        for rule in rules
    }
    entry["num_examples"] = len(by_rule[rules[0]])
    per_template.setdefault(task, {})[template] = entry

  per_task: dict[str, dict[str, Any]] = {}
  for task, templates in per_template.items():
    entry = {
        METRIC_NAMES[rule]: _statistics(
            [t[METRIC_NAMES[rule]] for t in templates.values()])
        for rule in rules
    }
    entry["num_templates"] = len(templates)
    entry["num_examples"] = sum(t["num_examples"] for t in templates.values())
    per_task[task] = entry

  overall: dict[str, Any] = {
      METRIC_NAMES[rule]: {
          stat: float(np.mean(
              [t[METRIC_NAMES[rule]][stat] for t in per_task.values()]))
          for stat in STATISTICS
      } for rule in rules
  }
  overall["num_tasks"] = len(per_task)
  overall["num_templates"] = sum(t["num_templates"] for t in per_task.values())
  overall["num_examples"] = len(examples)
  return {"per_template": per_template, "per_task": per_task,
          "overall": overall}
