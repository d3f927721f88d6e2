"""The records an evaluation reads: loading, capping, validation and controls.

Records are plain dicts of text before tokenization (`hyper_tasks.data.features`
names the keys). This module

* reads a task's or mixture's records (`load_task_records`, `load`), deciding
  rank classification vs generation from the mode each task was registered
  with (`registry.evaluation_mode`) or, for in-memory records, from the records
  themselves (`rank_tasks_of`: a task with `num_choices > 1` rows);
* caps them per (task, template) group to the first `max_examples` examples
  (`_cap_per_group`), reading rank-classification examples with all their
  answer choices (`_load_rank_rows`);
* validates them before any model runs (`references`, `check_rank_records`),
  with errors naming task and example;
* rewrites their instructions by a robustness control, per example
  (`control_name`, `apply_control`; the controls themselves are controls.py).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from typing import Any, Collection, Mapping, Optional, Sequence

import seqio

from hyper_tasks.data import features as F
from hyper_tasks.data import pipeline
from hyper_tasks.data import registry
from hyper_tasks.evaluation import controls as controls_lib

Record = Mapping[str, Any]

# Short control names accepted by the evaluator -> controls.CONTROLS keys.
CONTROL_ALIASES = {
    "shuffle": "shuffled_instruction",
    "shuffled": "shuffled_instruction",
    "random": "random_instruction",
    "empty": "empty_instruction",
}
_UNCATEGORIZED = "uncategorized"


def control_name(control: Optional[str]) -> Optional[str]:
  """The canonical controls.CONTROLS name of `control` (None stays None)."""
  if control is None:
    return None
  name = CONTROL_ALIASES.get(control, control)
  if name not in controls_lib.CONTROLS:
    raise ValueError(
        f"Unknown control {control!r}; use one of "
        f"{sorted(CONTROL_ALIASES) + sorted(controls_lib.CONTROLS)} or None.")
  return name


def example_key(record: Record) -> tuple[str, str, str]:
  """(task, template, example id): the rows of one rank-classification example."""
  return (str(record[F.TASK_NAMES]), str(record[F.TEMPLATE]),
          str(record[F.EXAMPLE_ID]))


def rank_tasks_of(records: Sequence[Record]) -> set[str]:
  """`task_names` of the records that are answer choices (`num_choices > 1`)."""
  return {str(r[F.TASK_NAMES]) for r in records
          if int(r.get(F.NUM_CHOICES, 1)) > 1}


def categories(records: Sequence[Record]) -> Optional[list[str]]:
  """Each record's SNI category (None when no record has one)."""
  cats = [str(r.get(F.CATEGORY) or "") for r in records]
  if not any(cats):
    return None
  return [c or _UNCATEGORIZED for c in cats]


# -- loading ------------------------------------------------------------------


@dataclasses.dataclass
class TaskRecords:
  """The records of one seqio task and how they are evaluated."""
  name: str
  records: list[dict[str, Any]]
  rank_classification: bool


def _first_complete_examples(rows: Sequence[dict[str, Any]],
                             max_examples: Optional[int],
                             exhausted: bool) -> tuple[list[dict], int]:
  """Rows of the first `max_examples` examples with all their choices.

  Returns:
    (rows, number of complete examples seen). An incomplete example at the end
    of a read that was cut short is dropped (its other choices were not read);
    incomplete examples of an exhausted read are kept, for validation to name.
  """
  groups: dict[tuple, list[dict]] = collections.OrderedDict()
  for row in rows:
    groups.setdefault(example_key(row), []).append(row)
  out, complete = [], 0
  for group in groups.values():
    is_complete = len(group) == int(group[0][F.NUM_CHOICES])
    complete += is_complete
    if not is_complete and not exhausted:
      continue
    if max_examples is not None and complete > max_examples:
      break
    out.extend(group)
  return out, complete


def _load_rank_rows(task_name: str, split: str, max_examples: Optional[int],
                    lengths: Mapping[str, int]) -> list[dict[str, Any]]:
  """Reads enough rows for `max_examples` complete rank-classification examples."""
  if max_examples is None:
    rows = pipeline.load_examples(task_name, split, None, lengths)
    return _first_complete_examples(rows, None, exhausted=True)[0]
  limit = max(4 * max_examples, 8)
  while True:
    rows = pipeline.load_examples(task_name, split, limit, lengths)
    exhausted = len(rows) < limit
    out, complete = _first_complete_examples(rows, max_examples, exhausted)
    if exhausted or complete > max_examples:
      return out
    limit *= 2


def _cap_per_group(records: Sequence[dict[str, Any]],
                   max_examples: Optional[int]) -> list[dict[str, Any]]:
  """The records of the first `max_examples` examples of each (task, template).

  Rows of one rank-classification example share an example key and count once.
  """
  if max_examples is None:
    return list(records)
  seen: dict[tuple[str, str], set] = collections.defaultdict(set)
  out = []
  for index, record in enumerate(records):
    task, template, example_id = example_key(record)
    examples = seen[(task, template)]
    key = example_id if int(record.get(F.NUM_CHOICES, 1)) > 1 else index
    if key not in examples and len(examples) >= max_examples:
      continue
    examples.add(key)
    out.append(record)
  return out


def load_task_records(name: str, split: str = "test", *,
                      max_examples: Optional[int] = None,
                      sequence_lengths: Optional[Mapping[str, int]] = None
                      ) -> list[TaskRecords]:
  """Records of every seqio task of `name` (a task or mixture) that has `split`.

  Args:
    name: seqio task or mixture name.
    split: the split to read.
    max_examples: per (task, template) group (see `_cap_per_group`); counts
      examples, not answer-choice rows. Token-level tasks (C4-style) are capped
      per seqio task instead: they are not read in full.
    sequence_lengths: only used by token-level tasks (C4-style).

  Raises:
    ValueError: no task of `name` has `split`, or none has examples.
  """
  provider = pipeline.get_provider(name)
  tasks = (provider.tasks if isinstance(provider, seqio.Mixture)
           else [provider])
  lengths = dict(sequence_lengths or pipeline.DEFAULT_SEQUENCE_LENGTHS)
  out = []
  for task in tasks:
    if split not in task.splits:
      logging.info("evaluation: %s has no split %r; skipped.", task.name, split)
      continue
    if registry.evaluation_mode(task.name) == registry.RANK:
      # One P3 task is one template: reading its first examples is the cap.
      records = _load_rank_rows(task.name, split, max_examples, lengths)
      rank = True
    elif registry.is_text_level(task.name):
      # One task may hold many groups (all SNI test tasks): read it in full
      # (text records are cheap) and cap each group.
      records = pipeline.load_examples(task.name, split, None, lengths)
      rank = bool(rank_tasks_of(records))
    else:
      records = pipeline.load_examples(task.name, split, max_examples, lengths)
      rank = False
    records = _cap_per_group(records, max_examples)
    if not records:
      logging.warning("evaluation: %s/%s has no examples%s.", task.name, split,
                      " with answer choices" if rank else "")
      continue
    out.append(TaskRecords(task.name, records, rank))
  if not out:
    available = sorted({s for t in tasks for s in t.splits})
    raise ValueError(
        f"{name!r} has no examples in split {split!r} (its tasks have splits "
        f"{available}; rank-classification tasks need answer choices).")
  return out


def task_vocabulary(name: str):
  """The targets vocabulary of `name`'s first task."""
  return pipeline.task_vocabulary(name)


def load(names: Sequence[str], split: str, max_examples: Optional[int],
         sequence_lengths: Optional[Mapping[str, int]]
         ) -> tuple[list[dict], set[str]]:
  """(records, rank-classification `task_names`) of the union of the names'
  seqio tasks (each task once).

  Raises:
    ValueError: one `task_names` value evaluated both ways (records are routed
      by task name).
  """
  records, seen = [], set()
  mode_of: dict[str, tuple[bool, str]] = {}  # task_names -> (rank?, seqio task)
  for name in names:
    for task in load_task_records(name, split, max_examples=max_examples,
                                  sequence_lengths=sequence_lengths):
      if task.name in seen:
        continue
      seen.add(task.name)
      for task_name in {str(r[F.TASK_NAMES]) for r in task.records}:
        rank, other = mode_of.setdefault(
            task_name, (task.rank_classification, task.name))
        if rank != task.rank_classification:
          raise ValueError(
              f"Task {task_name!r} is evaluated by rank classification in "
              f"{(task.name if task.rank_classification else other)!r} and by "
              f"generation in "
              f"{(other if task.rank_classification else task.name)!r}; "
              "evaluate them in separate calls.")
      records.extend(task.records)
  rank_tasks = {t for t, (rank, _) in mode_of.items() if rank}
  return records, rank_tasks


# -- validation ----------------------------------------------------------------


def _where(record: Record, index: int) -> str:
  return (f"task {record.get(F.TASK_NAMES)!r} example "
          f"{record.get(F.EXAMPLE_ID) or index!r}")


def references(record: Record, index: int) -> list[str]:
  """The reference list of a generation record, or a clear error."""
  raw = record.get(F.REFERENCES)
  if raw is None:
    raise ValueError(f"{_where(record, index)} has no {F.REFERENCES!r} field; "
                     "generation metrics need references.")
  refs = json.loads(raw) if isinstance(raw, str) else list(raw)
  if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
    raise ValueError(f"{_where(record, index)}: references must be a list of "
                     f"strings, got {raw!r}.")
  if not refs:
    raise ValueError(f"{_where(record, index)} has no references; generation "
                     "metrics need at least one.")
  return refs


def check_rank_records(records: Sequence[Record]) -> None:
  """Every example has an id, all its choices and a correct one."""
  by_key: dict[tuple, list[Record]] = collections.OrderedDict()
  for i, record in enumerate(records):
    for key in (F.EXAMPLE_ID, F.CHOICE_INDEX, F.IS_CORRECT, F.NUM_CHOICES):
      if key not in record:
        raise ValueError(f"{_where(record, i)} has no {key!r} field; rank "
                         "classification needs answer-choice rows.")
    if not str(record[F.EXAMPLE_ID]):
      raise ValueError(f"task {record.get(F.TASK_NAMES)!r} record {i} has an "
                       "empty example_id; rank classification groups the "
                       "choices of an example by it.")
    by_key.setdefault(example_key(record), []).append(record)
  for (task, template, example_id), group in by_key.items():
    where = (f"task {task!r} template {template!r} example {example_id!r}")
    n = int(group[0][F.NUM_CHOICES])
    if n < 1:
      raise ValueError(f"{where} has no answer choices.")
    indices = sorted(int(r[F.CHOICE_INDEX]) for r in group)
    if indices != list(range(n)):
      raise ValueError(f"{where} has choice rows {indices}, expected "
                       f"0..{n - 1}.")
    if not any(int(r[F.IS_CORRECT]) for r in group):
      choices = [r[F.TARGETS] for r in sorted(
          group, key=lambda r: int(r[F.CHOICE_INDEX]))]
      raise ValueError(f"{where}: no answer choice is marked correct "
                       f"(choices {choices}).")


# -- controls --------------------------------------------------------------------


def apply_control(records: Sequence[Record], control: str, *, seed: int = 0,
                  rank_classification_tasks: Optional[Collection[str]] = None
                  ) -> list[dict[str, Any]]:
  """Rewrites the instructions of `records` by a control, per EXAMPLE.

  controls.py numbers rows; the answer-choice rows of one rank-classification
  example must keep one shared instruction, so the control is applied to one
  representative row per example and copied to the example's other rows.

  Args:
    records: features.py records.
    control: a control name (see `control_name`).
    seed: the control's seed.
    rank_classification_tasks: `task_names` whose rows are answer choices;
      None: `rank_tasks_of(records)`.

  Returns:
    New records (inputs untouched), in the input order.
  """
  control = control_name(control)
  if control is None:
    raise ValueError("apply_control needs a control, got None.")
  if rank_classification_tasks is None:
    rank_classification_tasks = rank_tasks_of(records)
  rank_tasks = set(rank_classification_tasks)
  representatives, owner = [], []
  index_of: dict[tuple, int] = {}
  for record in records:
    key = (example_key(record) if str(record[F.TASK_NAMES]) in rank_tasks
           else None)
    if key is not None and key in index_of:
      owner.append(index_of[key])
      continue
    if key is not None:
      index_of[key] = len(representatives)
    owner.append(len(representatives))
    representatives.append(record)
  rewritten = controls_lib.apply_control(control, representatives, seed)
  out = []
  for record, o in zip(records, owner):
    new = dict(record)
    new[F.HYPER_INPUTS] = rewritten[o][F.HYPER_INPUTS]
    out.append(new)
  return out
