"""P3 / T0: dataset rows rendered into records, few-shot, rank classification.

Records. ``render`` turns a dataset row into (prompt, target, answer choices) and
returns None where promptsource yields no usable pair (a template that does not
apply to the row, or an unlabeled row). ``inputs`` is the rendered prompt;
``hyper_inputs`` is the template's instruction
(``p3_instructions.template_instruction``) or, in the per-example form, the
prompt again.

Rank classification (T0's held-out evaluation): ``rank_classification`` is a seqio
preprocessor expanding each example into one example per answer choice, with
``targets`` the choice, ``choice_index``, ``is_correct`` (choice == gold target)
and ``num_choices``; all choices of an example share its ``example_id``.

Few-shot. ``make_record`` adds k solved examples, rendered with the same
template, before the instruction in ``hyper_inputs`` (HINT) or, for baselines,
before the prompt in ``inputs`` (``hyper_inputs`` then empty). Two formats:

  ``flan`` (default; HINT's FLAN-style format on P3, FLAN's few-shot defaults
  as HINT's few-shot T0 tasks set them; the query's ``inputs`` also get the
  ``" X"`` delimiter)::

    0 <prompt 1> X 1 <target 1> X 0 <prompt 2> X 1 <target 2> X  Definition: <instr>

  ``newline``::

    <prompt 1>\\n<target 1>\\n\\n<prompt 2>\\n<target 2>\\n\\n<instruction>

Shots come from the training split when it is available locally, otherwise from
the same split; either way they never include the example itself, and they are a
seeded function of the example's index.

The rest of P3: p3_templates.py (promptsource templates), p3_instructions.py
(template instructions), p3_rows.py (datasets and their rows), p3_tasks.py
(seqio registration of the ``p3_*`` tasks and ``t0_*`` mixtures).
"""
from __future__ import annotations

import dataclasses
import logging
import random
import zlib
from typing import Any, Mapping, Optional, Sequence

import tensorflow as tf

from hyper_tasks.data import features as F
from hyper_tasks.data import p3_rows
from hyper_tasks.data import p3_templates


@dataclasses.dataclass(frozen=True)
class Rendered:
  prompt: str
  target: str
  choices: Optional[tuple[str, ...]]


def render(template: p3_templates.Template, row: Mapping[str, Any],
           seed: int = 0) -> Optional[Rendered]:
  """A row through a template; None where promptsource gives no usable pair."""
  example = p3_templates.remove_hyphen(row)
  parts = template.apply(example, seed=seed)
  if len(parts) != 2 or not parts[0] or not parts[1]:
    return None
  choices = template.answer_choices_list(example)
  return Rendered(parts[0], parts[1], tuple(choices) if choices else None)


FEW_SHOT_FLAN = "flan"
FEW_SHOT_NEWLINE = "newline"
FEW_SHOT_FORMATS = (FEW_SHOT_FLAN, FEW_SHOT_NEWLINE)
# HINT's FLAN-style exemplar format on P3 (FLAN's few-shot defaults as HINT's
# t0 few-shot tasks set them): "0 " before each exemplar's input, " X " after
# it and after its target, " Definition: " before the query.
FLAN_INPUTS_PREFIX = "0 "
FLAN_TARGETS_PREFIX = "1 "
FLAN_X_Y_DELIMITER = " X "
FLAN_EXAMPLE_SEPARATOR = " X "
FLAN_DEFINITION_SEPARATOR = " Definition: "


def format_shots(shots: Sequence[Rendered],
                 shot_format: str = FEW_SHOT_FLAN) -> str:
  """The exemplars as one string, in ``shot_format`` (see the module docstring).

  ``newline``: ``<prompt>\\n<target>`` per shot, separated by blank lines.
  ``flan``: ``0 <prompt> X 1 <target> X `` per shot, concatenated.
  """
  if shot_format == FEW_SHOT_NEWLINE:
    return "\n\n".join(f"{s.prompt}\n{s.target}" for s in shots)
  if shot_format == FEW_SHOT_FLAN:
    return "".join(
        f"{FLAN_INPUTS_PREFIX}{s.prompt}{FLAN_X_Y_DELIMITER}"
        f"{FLAN_TARGETS_PREFIX}{s.target}{FLAN_EXAMPLE_SEPARATOR}"
        for s in shots)
  raise ValueError(f"Unknown few-shot format {shot_format!r}; use one of "
                   f"{FEW_SHOT_FORMATS}.")


def with_shots(shots: Sequence[Rendered], query: str,
               shot_format: str = FEW_SHOT_FLAN) -> str:
  """The exemplars followed by ``query`` (an instruction or a prompt)."""
  separator = ("\n\n" if shot_format == FEW_SHOT_NEWLINE
               else FLAN_DEFINITION_SEPARATOR)
  return format_shots(shots, shot_format) + separator + query


def make_record(dataset: p3_rows.P3Dataset, template: p3_templates.Template,
                rendered: Rendered,
                example_id: str, shots: Sequence[Rendered] = (),
                shots_in_inputs: bool = False,
                with_choices: bool = False,
                instruction: Optional[str] = None,
                shot_format: str = FEW_SHOT_FLAN) -> dict[str, Any]:
  """One record (features.py schema); few-shot when ``shots`` are given.

  Args:
    dataset: the row's dataset.
    template: the template it was rendered with.
    rendered: the row's rendering.
    example_id: unique per example.
    shots: solved exemplars (rendered with the same template).
    shots_in_inputs: put the shots in ``inputs`` (baselines; ``hyper_inputs``
      then empty) instead of ``hyper_inputs``.
    with_choices: add ``answer_choices`` (rank classification).
    instruction: the template-level instruction (``template_instruction``);
      None: the rendered prompt (the per-example form).
    shot_format: ``flan`` (HINT's) or ``newline``.
  """
  hyper = rendered.prompt if instruction is None else instruction
  inputs = rendered.prompt
  if shots:
    if shot_format == FEW_SHOT_FLAN:
      # HINT's few-shot tasks append the delimiter to the query's inputs too
      # (then strip trailing spaces): "<prompt> X".
      inputs = (rendered.prompt + FLAN_X_Y_DELIMITER).strip()
    if shots_in_inputs:
      hyper, inputs = "", with_shots(shots, inputs, shot_format)
    else:
      hyper = with_shots(shots, hyper, shot_format)
  record = F.make_example(hyper, inputs, rendered.target, dataset.task_key,
                          template=template.name, example_id=example_id)
  if with_choices:
    record[p3_templates.ANSWER_CHOICES] = list(rendered.choices or ())
  return record


def pick_shots(pool: Sequence[tuple[int, Rendered]], k: int, index: int,
               same_split: bool, seed: int, salt: str) -> list[Rendered]:
  """k shots for row ``index``: seeded, never the row itself.

  Args:
    pool: (row index, rendering) candidates.
    k: number of shots (fewer if the pool is smaller).
    index: the row being answered.
    same_split: whether the pool comes from the row's own split.
    seed: user seed.
    salt: distinguishes tasks (dataset/template).
  """
  candidates = [r for i, r in pool if not (same_split and i == index)]
  rng = random.Random(zlib.crc32(f"{seed}/{salt}/{index}".encode()))
  return rng.sample(candidates, min(k, len(candidates)))


# --------------------------------------------------------- tf preprocessors


def rank_classification(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """seqio preprocessor: one example per answer choice (T0's score_eval).

  Input examples carry ``answer_choices`` ``[n]``; output examples have
  ``targets`` = choice i, ``choice_index`` = i, ``is_correct`` = (choice i ==
  the gold target), ``num_choices`` = n, and every other feature copied.
  Examples without choices are dropped.
  """

  def expand(ex):
    choices = ex[p3_templates.ANSWER_CHOICES]
    n = tf.size(choices)
    out = {k: tf.fill([n], v) for k, v in ex.items()
           if k not in (p3_templates.ANSWER_CHOICES, F.TARGETS,
                        F.CHOICE_INDEX, F.IS_CORRECT, F.NUM_CHOICES)}
    out[F.TARGETS] = choices
    out[F.CHOICE_INDEX] = tf.range(n, dtype=tf.int32)
    out[F.IS_CORRECT] = tf.cast(
        tf.equal(choices, tf.strings.strip(ex[F.TARGETS])), tf.int32)
    out[F.NUM_CHOICES] = tf.fill([n], tf.cast(n, tf.int32))
    return out

  ds = dataset.filter(lambda ex: tf.size(ex[p3_templates.ANSWER_CHOICES]) > 0)
  return ds.map(expand, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def log_skipped(name: str, skipped: int, total: int) -> None:
  if skipped:
    logging.info("%s: %d of %d rows give no prompt/target pair (skipped).",
                 name, skipped, total)
