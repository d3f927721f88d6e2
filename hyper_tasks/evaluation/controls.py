"""Robustness controls: does the model actually use the instruction?

A hypernetwork that scores well with the real instruction might be exploiting
the instance inputs alone. These controls rewrite the instruction of every
evaluation example and keep everything else (inputs, targets, task names), so
the gap between the real and the controlled scores measures how much the model
relies on the instruction:

- `shuffled_instruction`: every task receives ANOTHER task's instruction (a
  derangement over tasks): fluent, well-formed, but wrong.
- `random_instruction`: the instruction is replaced by random words, with the
  same number of words as the original.
- `empty_instruction`: the instruction is the empty string.

Examples are plain dicts as produced by the evaluation input pipeline before
tokenization (`hyper_inputs`, `inputs`, `targets`, `task_names`, ...). The
rewritten field is `hyper_inputs` by default (`key=`); for the
concatenated-instruction baselines, whose instruction lives inside `inputs`,
apply the control to the raw instruction field before the prompt is formatted.

Design choices:

- Controls act per TASK, not per example: all examples that shared an
  instruction still share its replacement, so the evaluator's per-task
  hypernetwork cache behaves as in the real run and a task is evaluated under
  one coherent (wrong) instruction.
- Deterministic given `seed` and independent of example order (tasks and
  instructions are processed in sorted order).
- Inputs are never mutated; each function returns new (shallow-copied) dicts.
  Text stays `str` or `bytes` as it came in.

All controls share the signature `fn(examples, seed=0, **kwargs)`, so the
evaluator can run any of `CONTROLS` by name.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

Example = Mapping[str, Any]

INSTRUCTION_KEY = "hyper_inputs"
TASK_KEY = "task_names"


def _text(value: Any, what: str) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, str):
    return value
  raise TypeError(f"{what} must be str or bytes (untokenized text), got "
                  f"{type(value).__name__}.")


def _like(original: Any, text: str) -> Any:
  """`text` in the same type (str or bytes) as `original`."""
  return text.encode("utf-8") if isinstance(original, bytes) else text


def _replace(example: Example, key: str, text: str) -> dict[str, Any]:
  out = dict(example)
  out[key] = _like(example[key], text)
  return out


def _task_and_instruction(example: Example, index: int, key: str,
                          task_key: str) -> tuple[str, str]:
  for k in (key, task_key):
    if k not in example:
      raise ValueError(f"example {index} has no {k!r} field.")
  return (_text(example[task_key], f"example {index} {task_key!r}"),
          _text(example[key], f"example {index} {key!r}"))


def _random_derangement(n: int, rng: random.Random) -> list[int]:
  """A uniformly random permutation of range(n) with no fixed point (n >= 2)."""
  # Rejection sampling: a random permutation is a derangement with probability
  # about 1/e, so this takes e ~ 2.7 shuffles on average.
  while True:
    perm = list(range(n))
    rng.shuffle(perm)
    if all(i != p for i, p in enumerate(perm)):
      return perm


def shuffle_instructions(examples: Sequence[Example], seed: int = 0, *,
                         key: str = INSTRUCTION_KEY,
                         task_key: str = TASK_KEY) -> list[dict[str, Any]]:
  """Gives each task the instruction of another task.

  The tasks (sorted by name) are permuted by a random derangement drawn from
  `seed`; task `t` receives the instructions of task `donor(t) != t`. When a
  task's examples carry several distinct instructions (e.g. per-example
  demonstrations), the i-th example of `t` takes the (i mod k)-th of the `k`
  distinct instructions of the donor, in the donor's order of first
  appearance. Two tasks with identical instruction text can of course not be
  told apart by shuffling.

  Args:
    examples: example dicts (see module docstring).
    seed: random seed.
    key: the instruction field.
    task_key: the task-name field.

  Returns:
    New example dicts, in the input order.

  Raises:
    ValueError: fewer than 2 distinct tasks, or a field is missing.
  """
  pairs = [_task_and_instruction(ex, i, key, task_key)
           for i, ex in enumerate(examples)]
  by_task: dict[str, list[str]] = {}
  for task, instruction in pairs:
    distinct = by_task.setdefault(task, [])
    if instruction not in distinct:
      distinct.append(instruction)
  tasks = sorted(by_task)
  if len(tasks) < 2:
    raise ValueError(
        f"shuffle_instructions needs at least 2 distinct tasks, got {tasks}.")
  perm = _random_derangement(len(tasks), random.Random(seed))
  donor = {task: tasks[perm[i]] for i, task in enumerate(tasks)}

  seen: dict[str, int] = {task: 0 for task in tasks}
  out = []
  for example, (task, _) in zip(examples, pairs):
    donated = by_task[donor[task]]
    out.append(_replace(example, key, donated[seen[task] % len(donated)]))
    seen[task] += 1
  return out


def _word_pool(examples: Sequence[Example], words: Optional[Iterable[str]],
               text_pool: Optional[Iterable[str]]) -> list[str]:
  if words is not None and text_pool is not None:
    raise ValueError("Pass at most one of `words` and `text_pool`.")
  if words is not None:
    pool = [_text(w, "a vocabulary word") for w in words]
  else:
    if text_pool is None:
      # Default: words of the instance inputs. They are real text in the
      # evaluation's language but describe no task.
      text_pool = [ex["inputs"] for ex in examples if "inputs" in ex]
    pool = [w for t in text_pool for w in _text(t, "a pool text").split()]
  if not pool:
    raise ValueError("random_instruction has an empty word pool.")
  # Sorted for order-independence; duplicates are kept so that word
  # frequencies survive.
  return sorted(pool)


def random_instruction(examples: Sequence[Example], seed: int = 0, *,
                       words: Optional[Iterable[str]] = None,
                       text_pool: Optional[Iterable[str]] = None,
                       key: str = INSTRUCTION_KEY,
                       task_key: str = TASK_KEY) -> list[dict[str, Any]]:
  """Replaces each instruction with random words of the same word count.

  Words are drawn uniformly with replacement from `words`, else from the
  whitespace-split `text_pool`, else from the examples' `inputs`. Each distinct
  (task, instruction) pair gets one replacement, shared by its examples.

  Args:
    examples: example dicts (see module docstring).
    seed: random seed.
    words: vocabulary to draw from.
    text_pool: texts whose words form the vocabulary (if `words` is None).
    key: the instruction field.
    task_key: the task-name field.

  Returns:
    New example dicts, in the input order.

  Raises:
    ValueError: both or an empty word source, or a field is missing.
  """
  pool = _word_pool(examples, words, text_pool)
  pairs = [_task_and_instruction(ex, i, key, task_key)
           for i, ex in enumerate(examples)]
  rng = random.Random(seed)
  replacement = {}
  for task, instruction in sorted(set(pairs)):
    n = len(instruction.split())
    replacement[(task, instruction)] = " ".join(
        rng.choice(pool) for _ in range(n))
  return [_replace(ex, key, replacement[pair])
          for ex, pair in zip(examples, pairs)]


def empty_instruction(examples: Sequence[Example], seed: int = 0, *,
                      key: str = INSTRUCTION_KEY,
                      task_key: str = TASK_KEY) -> list[dict[str, Any]]:
  """Replaces every instruction by the empty string (`seed` is unused)."""
  del seed  # Same signature as the other controls.
  out = []
  for i, example in enumerate(examples):
    _task_and_instruction(example, i, key, task_key)  # Validates the fields.
    out.append(_replace(example, key, ""))
  return out


CONTROLS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "shuffled_instruction": shuffle_instructions,
    "random_instruction": random_instruction,
    "empty_instruction": empty_instruction,
}


def apply_control(name: str, examples: Sequence[Example], seed: int = 0,
                  **kwargs) -> list[dict[str, Any]]:
  """Runs `CONTROLS[name]`, with a clear error for unknown names."""
  if name not in CONTROLS:
    raise ValueError(f"Unknown control {name!r}; known: {sorted(CONTROLS)}.")
  return CONTROLS[name](examples, seed, **kwargs)
