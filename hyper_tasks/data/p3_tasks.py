"""seqio registration of P3 / T0 tasks and mixtures.

Templates: p3_templates.py; instructions: p3_instructions.py; datasets and rows:
p3_rows.py; rows -> records: p3.py.

Per (dataset, template) task, over datasets whose templates and data are present:

  ``p3_<dataset>_<template>``                         training data, all templates
  ``p3_<dataset>_<template>_<k>_shot[_concat]``       k-shot training
  ``p3_<dataset>_<template>_score_eval``              held-out, rank classification
  ``p3_<dataset>_<template>_score_eval_<k>_shot[_concat]``

Mixtures:

  ``t0_train``                           T0's training mixture: each template task
                                         weighted by its dataset's training rows,
                                         or 500k / #templates when the dataset
                                         has more than 500k rows (t0_rate)
  ``t0_train_<k>_shot[_concat]``         the same with k shots
  ``t0_eval_score_eval``                 T0's held-out set (ANLI R1-R3, CB, COPA,
                                         HellaSwag, RTE, StoryCloze, WiC,
                                         Winogrande, WSC), ``original_task``
                                         templates only, split ``validation``
  ``t0_eval_score_eval_<k>_shot[_concat]``

``hyper_inputs`` is the template's instruction (``instruction="template"``, the
default: one per (dataset, template)) or each example's rendered prompt
(``"prompt"``); ``inputs`` is the rendered prompt. Few-shot variants put the
shots before it in ``hyper_inputs``, ``_concat`` variants before the prompt in
``inputs`` (baselines), in HINT's FLAN-style format or ``newline`` blocks
(``few_shot_format``; see p3.py). k is 1..5 by default.

Rows are rendered lazily (datasets can hold millions of rows; the T0 cap is
applied by the mixture rates, as in T0), so registration only checks which files
exist. A task's tf.data source moves row *indices*: it shards and shuffles them
(``_SHUFFLE_ROWS``-row buffer, seeded, reshuffled each epoch), then reads and
renders blocks of ``_RENDER_BLOCK`` rows in one Python call (local jsonl is read
by byte offset, ``p3_rows.RowReader``). Shuffling rendered records instead made the first example of
each task wait for ``_SHUFFLE_ROWS`` renderings (and held as many records per
task in memory), and one Python call per record cost more than rendering it.
Where every row renders, the order is the one a ``_SHUFFLE_ROWS``-record shuffle
of the rendered records would give (same seed); rows that render to nothing are
dropped after the shuffle. Training tasks have no second, seqio shuffle of their
examples (``_SCORE_EVAL_SHUFFLE``).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
from typing import Iterator, Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from hyper_tasks.data import features as F
from hyper_tasks.data import p3
from hyper_tasks.data import p3_instructions
from hyper_tasks.data import p3_rows
from hyper_tasks.data import p3_templates
from hyper_tasks.data import registry
from hyper_tasks.data import sources
from hyper_tasks.data import vocab as vocab_lib

MAX_EXAMPLES_PER_DATASET = 500_000
DEFAULT_SHOTS = (1, 2, 3, 4, 5)
_SHUFFLE_ROWS = 10_000
# Rows read and rendered per Python call of a task's source.
_RENDER_BLOCK = 64
# seqio's example shuffle after preprocessing. Training tasks have none: their
# source already shuffles rows, one example each, and a 1000-example buffer per
# task made the first batch of t0_train wait for 1000 renderings of (nearly)
# every task. Rank classification puts a row's choices next to each other.
_SCORE_EVAL_SHUFFLE = 1000


def t0_rate(num_rows: int, num_templates: int,
            max_examples: int = 500_000) -> int:
  """T0's mixing rate of each template task of a dataset (its example cap).

  As in T0's seqio tasks: a dataset with at most ``max_examples`` training rows
  contributes all of them through every template; a larger one is capped at
  ``max_examples`` in all, ``max_examples // num_templates`` per template.
  """
  if num_rows > max_examples:
    return max_examples // max(num_templates, 1)
  return num_rows


@functools.lru_cache(maxsize=256)
def _shot_pool(reader: p3_rows.RowReader, template: p3_templates.Template,
               split: str, max_pool: int
               ) -> tuple[tuple[int, p3.Rendered], ...]:
  """The first ``max_pool`` renderable rows of ``split`` (candidate shots)."""
  pool = []
  for index, row in reader.rows(split):
    rendered = p3.render(template, row, seed=index)
    if rendered is not None:
      pool.append((index, rendered))
      if len(pool) >= max_pool:
        break
  return tuple(pool)


@dataclasses.dataclass(frozen=True)
class _TaskSpec:
  """Everything one registered P3 task renders."""
  reader: p3_rows.RowReader
  template: p3_templates.Template
  score_eval: bool = False
  shots: int = 0
  shots_in_inputs: bool = False
  max_pool: int = 1000
  seed: int = 0
  instruction: str = p3_instructions.INSTRUCTION_TEMPLATE
  few_shot_format: str = p3.FEW_SHOT_FLAN

  def _context(self, split: str) -> tuple:
    """(shot pool, whether it is ``split``, template instruction or None)."""
    pool, same_split = (), True
    if self.shots:
      splits = self.reader.available_splits()
      pool_split = "train" if "train" in splits else split
      same_split = pool_split == split
      pool = _shot_pool(self.reader, self.template, pool_split, self.max_pool)
    instruction = None
    if self.instruction == p3_instructions.INSTRUCTION_TEMPLATE:
      instruction = p3_instructions.template_instruction(self.template)
    return pool, same_split, instruction

  @property
  def _salt(self) -> str:
    return f"{self.reader.dataset.task_key}/{self.template.id}"

  def _record(self, split: str, index: int, row: dict,
              context: tuple) -> Optional[dict]:
    """The record of row ``index``, or None where the row gives no example."""
    pool, same_split, instruction = context
    rendered = p3.render(self.template, row, seed=index)
    if rendered is None or (self.score_eval and not rendered.choices):
      return None
    shots = (p3.pick_shots(pool, self.shots, index, same_split, self.seed,
                           self._salt) if self.shots else ())
    key = self.reader.dataset.task_key
    return p3.make_record(
        self.reader.dataset, self.template, rendered,
        example_id=f"{key}-{split}-{index}", shots=shots,
        shots_in_inputs=self.shots_in_inputs, with_choices=self.score_eval,
        instruction=instruction, shot_format=self.few_shot_format)

  def records(self, split: str, shard_index: int = 0,
              num_shards: int = 1) -> Iterator[dict]:
    """A shard's records in row order (``dataset_fn`` unshuffled, slowly)."""
    context = self._context(split)
    total = skipped = 0
    for index, row in self.reader.rows(split, shard_index, num_shards):
      total += 1
      record = self._record(split, index, row, context)
      if record is None:
        skipped += 1
        continue
      yield record
    p3.log_skipped(f"{self._salt}/{split}", skipped, total)

  def render_block(self, split: str, indices: np.ndarray,
                   expected_rows: int = 0,
                   context: Optional[tuple] = None) -> list[np.ndarray]:
    """Records of rows ``indices`` as columns (``dataset_fn``'s Python call).

    Returns one array per key of ``F.RECORD_SIGNATURE`` (utf-8 bytes or int32),
    then, for score_eval, the answer choices flattened and their counts.
    ``context`` is ``_context(split)`` (computed when not given).
    """
    indices = [int(i) for i in indices]
    if context is None:
      context = self._context(split)
    rows = self.reader.rows_at(split, indices)
    records = [r for r in (self._record(split, i, row, context)
                           for i, row in zip(indices, rows)) if r is not None]
    _count_skipped(f"{self._salt}/{split}", len(indices) - len(records),
                   len(indices), expected_rows)
    columns = []
    for key, spec in F.RECORD_SIGNATURE.items():
      if spec.dtype == tf.string:
        columns.append(_bytes_array([r[key] for r in records]))
      else:
        columns.append(np.asarray([r[key] for r in records], dtype=np.int32))
    if self.score_eval:
      columns.append(_bytes_array(
          [c for r in records for c in r[p3_templates.ANSWER_CHOICES]]))
      columns.append(np.asarray([len(r[p3_templates.ANSWER_CHOICES])
                                 for r in records],
                                dtype=np.int64))
    return columns

  def dataset_fn(self, split, shuffle_files, seed=None, shard_info=None):
    """Records of a shard: row indices sharded, shuffled, then rendered."""
    index = shard_info.index if shard_info else 0
    num_shards = shard_info.num_shards if shard_info else 1
    num_rows = self.reader.num_rows(split, strict=True)
    # The rows of this shard are rows index, index + num_shards, ...
    ds = tf.data.Dataset.range(index, num_rows, num_shards)
    if shuffle_files:
      ds = ds.shuffle(_SHUFFLE_ROWS, seed=seed, reshuffle_each_iteration=True)
    shard_rows = len(range(index, num_rows, num_shards))
    keys = list(F.RECORD_SIGNATURE)
    dtypes = [F.RECORD_SIGNATURE[k].dtype for k in keys]
    if self.score_eval:
      dtypes += [tf.string, tf.int64]
    if self.instruction == p3_instructions.INSTRUCTION_TEMPLATE:
      # Derived (and any fallback logged) once, here, not in reader threads.
      p3_instructions.template_instruction(self.template)
    # The shot pool is rendered at the first block and kept with the dataset
    # (not in _shot_pool's cache alone, which hundreds of tasks would cycle).
    context = []

    def render(block):
      if not context:
        context.append(self._context(split))
      return self.render_block(split, block, shard_rows, context[0])

    @tf.autograph.experimental.do_not_convert
    def render_columns(block):
      columns = tf.numpy_function(render, [block], dtypes)
      for column in columns:
        column.set_shape([None])
      out = dict(zip(keys, columns))
      if self.score_eval:
        values, lengths = columns[len(keys):]
        out[p3_templates.ANSWER_CHOICES] = (
            tf.RaggedTensor.from_row_lengths(values, lengths, validate=False))
      return out

    # One block at a time, when the next example is wanted: a parallel map
    # renders ahead (up to a block per pool thread, in each of hundreds of
    # tasks), and Python rendering holds the GIL anyway.
    ds = ds.batch(_RENDER_BLOCK).map(render_columns)
    if not self.score_eval:
      return _unbatch_dense(ds)
    # Unbatched ragged rows: make answer_choices a plain [n] tensor again.
    return ds.unbatch().map(lambda ex: {**ex},
                            num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=True)


def _unbatch_dense(ds: tf.data.Dataset) -> tf.data.Dataset:
  """``ds.unbatch()`` for elements of dense tensors, without its map.

  ``Dataset.unbatch`` first maps every element through a traced identity
  function (it normalizes ragged and sparse components); building and
  instantiating that function costs ~15 ms per task, seconds for T0's hundreds
  of template tasks. The unbatch op alone gives the same elements.
  """
  try:
    from tensorflow.python.data.ops import unbatch_op  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
    return unbatch_op._UnbatchDataset(ds)  # pylint: disable=protected-access
  except (ImportError, AttributeError, TypeError):  # Another TF version.
    return ds.unbatch()


def _bytes_array(strings: Sequence[str]) -> np.ndarray:
  out = np.empty([len(strings)], dtype=object)
  out[:] = [s.encode("utf-8") for s in strings]
  return out


# Rows rendered and skipped per task and split, to log the skip count once.
_SKIPPED: dict[str, list[int]] = {}
_SKIPPED_LOCK = threading.Lock()


def _count_skipped(name: str, skipped: int, total: int,
                   expected_rows: int) -> None:
  """Logs once how many rows give no example, after a shard's worth of rows."""
  with _SKIPPED_LOCK:
    counts = _SKIPPED.setdefault(name, [0, 0, 0])  # skipped, total, logged
    if counts[2]:
      return
    counts[0] += skipped
    counts[1] += total
    if counts[1] < expected_rows:
      return
    counts[2] = 1
  p3.log_skipped(name, counts[0], counts[1])


def _rate(reader: p3_rows.RowReader, num_templates: int, max_examples: int,
          task: seqio.Task) -> float:
  """T0's mixing rate of one template task (rows are counted when mixing)."""
  del task
  return float(t0_rate(reader.num_rows("train"), num_templates,
                          max_examples))


def _task_name(dataset: p3_rows.P3Dataset, template: p3_templates.Template,
               taken: set[str], suffix: str = "") -> str:
  """``p3_<dataset>_<template><suffix>``, unique among ``taken``.

  A dataset may be both trained on and held out (``suffix`` ``_score_eval``):
  its two tasks of one template keep the same stem.
  """
  stem = f"p3_{dataset.task_key}_{p3_rows.task_clean(template.name)}"
  if stem + suffix in taken:  # Two template names that clean to one string.
    stem = f"{stem}_{p3_rows.task_clean(template.id)[:8]}"
  taken.add(stem + suffix)
  return stem + suffix


def _suffix(shots: int, in_inputs: bool) -> str:
  if not shots:
    return ""
  return f"_{shots}_shot" + ("_concat" if in_inputs else "")


@gin.configurable(module="hyper_tasks.data")
def register_t0(templates_dir: str,
                data_dir: Optional[str] = None,
                vocabulary: vocab_lib.VocabularyLike = vocab_lib.BYTE,
                *,
                train_datasets: Sequence[p3_rows.P3Dataset] = (
                    p3_rows.T0_TRAIN_DATASETS),
                eval_datasets: Sequence[p3_rows.P3Dataset] = (
                    p3_rows.T0_EVAL_DATASETS),
                shots: Sequence[int] = DEFAULT_SHOTS,
                max_shot_pool: int = 1000,
                use_hf_datasets: bool = False,
                seed: int = 0,
                max_examples_per_dataset: int = MAX_EXAMPLES_PER_DATASET,
                instruction: str = p3_instructions.INSTRUCTION_TEMPLATE,
                few_shot_format: str = p3.FEW_SHOT_FLAN) -> list[str]:
  """Registers P3 tasks and the ``t0_*`` mixtures for datasets with data.

  Args:
    templates_dir: promptsource templates root.
    data_dir: local data root (``<dataset>/<subset>/<split>.jsonl``).
    vocabulary: ``"byte"``, a SentencePiece path, or a seqio vocabulary.
    train_datasets: datasets of ``t0_train``.
    eval_datasets: held-out datasets of ``t0_eval_score_eval``.
    shots: k of the few-shot variants.
    max_shot_pool: shots are drawn from this many rows of the pool split.
    use_hf_datasets: read splits missing locally with ``datasets.load_dataset``.
    seed: shot-selection seed.
    max_examples_per_dataset: T0's cap (per dataset, shared by its templates).
    instruction: what ``hyper_inputs`` holds: ``"template"`` (HINT's default)
      the template's prompt with its fields blanked, one instruction per
      (dataset, template) (``p3_instructions.template_instruction``; a
      template that cannot be blanked falls back, with a warning, to the
      per-example form);
      ``"prompt"`` each example's rendered prompt (the per-example form).
    few_shot_format: ``"flan"`` (HINT's FLAN-style exemplars, the default) or
      ``"newline"`` (``<prompt>\\n<target>`` blocks); see ``p3.format_shots``.

  Returns:
    Registered names (empty when no dataset has both templates and data).

  Raises:
    ValueError: an unknown ``instruction`` or ``few_shot_format``.
  """
  if instruction not in p3_instructions.INSTRUCTIONS:
    raise ValueError(f"Unknown P3 instruction {instruction!r}; use one of "
                     f"{p3_instructions.INSTRUCTIONS}.")
  if few_shot_format not in p3.FEW_SHOT_FORMATS:
    raise ValueError(f"Unknown few-shot format {few_shot_format!r}; use one "
                     f"of {p3.FEW_SHOT_FORMATS}.")
  vocabulary = vocab_lib.get_vocabulary(vocabulary)
  vkey = vocab_lib.vocabulary_key(vocabulary)
  templates_dir = os.path.abspath(os.path.expanduser(templates_dir))
  data_dir = os.path.abspath(os.path.expanduser(data_dir)) if data_dir else None
  variants = [(0, False)] + [(k, False) for k in shots] + [(k, True)
                                                         for k in shots]
  names: list[str] = []
  taken: set[str] = set()
  members = {(score_eval, k, c): [] for score_eval in (False, True)
             for k, c in variants}

  for score_eval, datasets in ((False, train_datasets),
                               (True, eval_datasets)):
    for dataset in datasets:
      reader = p3_rows.RowReader(dataset, data_dir, use_hf_datasets)
      splits = reader.available_splits()
      if score_eval:
        splits = tuple(s for s in splits if s == "validation")
      elif "train" not in splits:
        splits = ()
      path = p3_templates.template_path(templates_dir, dataset.name,
                                        dataset.subset)
      if not splits or not os.path.exists(path):
        logging.debug("P3: skipping %s (templates or data missing).",
                      dataset.task_key)
        continue
      templates = p3_templates.load_templates(templates_dir, dataset.name,
                                              dataset.subset)
      if score_eval:
        templates = [t for t in templates if t.original_task]
      for template in templates:
        base = _task_name(dataset, template, taken,
                          "_score_eval" if score_eval else "")
        for k, in_inputs in variants:
          spec = _TaskSpec(reader, template, score_eval, k, in_inputs,
                           max_shot_pool, seed, instruction, few_shot_format)
          name = base + _suffix(k, in_inputs)
          extra = [p3.rank_classification] if score_eval else []
          registry.add_task(
              name, ("p3", spec, splits, vkey),
              functools.partial(
                  sources.text_task_kwargs,
                  sources.RecordsSource(spec.dataset_fn, splits), vocabulary,
                  extra_preprocessors=extra,
                  shuffle_buffer_size=(_SCORE_EVAL_SHUFFLE if score_eval
                                       else None)),
              evaluation_mode=(registry.RANK if score_eval
                               else registry.GENERATION))
          rate = 1.0 if score_eval else functools.partial(
              _rate, reader, len(templates), max_examples_per_dataset)
          members[(score_eval, k, in_inputs)].append((name, rate))
          names.append(name)

  for (score_eval, k, in_inputs), tasks in members.items():
    if not tasks:
      continue
    mixture = ("t0_eval_score_eval" if score_eval else "t0_train") + _suffix(
        k, in_inputs)
    registry.add_mixture(mixture, ("t0", max_examples_per_dataset), tasks)
    names.append(mixture)
  if not names:
    logging.warning("P3: no dataset has both templates under %s and data "
                    "under %s; nothing registered.", templates_dir, data_dir)
  return names
