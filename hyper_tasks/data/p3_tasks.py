"""seqio registration of P3 / T0 tasks and mixtures (templates and records: p3.py).

Per (dataset, template) task, over datasets whose templates and data are present:

  ``p3_<dataset>_<template>``                         training data, all templates
  ``p3_<dataset>_<template>_<k>_shot[_concat]``       k-shot training
  ``p3_<dataset>_<template>_score_eval``              held-out, rank classification
  ``p3_<dataset>_<template>_score_eval_<k>_shot[_concat]``

Mixtures:

  ``t0_train``                           T0's training mixture: each template task
                                         weighted by its dataset's training rows,
                                         or 500k / #templates when the dataset
                                         has more than 500k rows (p3.t0_rate)
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

Rows are rendered lazily in a Python generator (datasets can hold millions of
rows; the T0 cap is applied by the mixture rates, as in T0), so registration only
checks which files exist.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Iterator, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from hyper_tasks.data import features as F
from hyper_tasks.data import p3
from hyper_tasks.data import registry
from hyper_tasks.data import sources
from hyper_tasks.data import vocab as vocab_lib

MAX_EXAMPLES_PER_DATASET = 500_000
DEFAULT_SHOTS = (1, 2, 3, 4, 5)
_SHUFFLE_ROWS = 10_000


@dataclasses.dataclass(frozen=True)
class RowReader:
  """Reads a P3Dataset's rows from local jsonl, or ``datasets`` if allowed."""
  dataset: p3.P3Dataset
  data_dir: Optional[str]
  use_hf_datasets: bool = False

  def _path(self, split: str) -> Optional[str]:
    if not self.data_dir:
      return None
    return p3.find_data_file(self.data_dir, self.dataset,
                             self.dataset.hf_split(split))

  def available_splits(self) -> tuple[str, ...]:
    return tuple(s for s, _ in self.dataset.splits
                 if self._path(s) or self.use_hf_datasets)

  def rows(self, split: str, shard_index: int = 0,
           num_shards: int = 1) -> Iterator[tuple[int, dict]]:
    path = self._path(split)
    if path:
      yield from p3.iter_jsonl(path, shard_index, num_shards)
      return
    rows = _hf_rows_cached(self.dataset, self.dataset.hf_split(split))
    if rows is None:
      raise FileNotFoundError(
          f"No local data for {self.dataset.task_key}/{split} under "
          f"{self.data_dir!r} and the `datasets` package is not installed.")
    for index, row in enumerate(rows):
      if index % num_shards == shard_index:
        yield index, row

  def num_rows(self, split: str) -> int:
    path = self._path(split)
    if path:
      return p3.count_rows(path)
    rows = _hf_rows_cached(self.dataset, self.dataset.hf_split(split))
    return len(rows or ())


@functools.lru_cache(maxsize=16)
def _hf_rows_cached(dataset: p3.P3Dataset, hf_split: str):
  return p3.hf_rows(dataset, hf_split)


@functools.lru_cache(maxsize=256)
def _shot_pool(reader: RowReader, template: p3.Template, split: str,
               max_pool: int) -> tuple[tuple[int, p3.Rendered], ...]:
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
  reader: RowReader
  template: p3.Template
  score_eval: bool = False
  shots: int = 0
  shots_in_inputs: bool = False
  max_pool: int = 1000
  seed: int = 0
  instruction: str = p3.INSTRUCTION_TEMPLATE
  few_shot_format: str = p3.FEW_SHOT_FLAN

  def records(self, split: str, shard_index: int = 0,
              num_shards: int = 1) -> Iterator[dict]:
    pool, same_split = (), True
    if self.shots:
      splits = self.reader.available_splits()
      pool_split = "train" if "train" in splits else split
      same_split = pool_split == split
      pool = _shot_pool(self.reader, self.template, pool_split, self.max_pool)
    key = self.reader.dataset.task_key
    salt = f"{key}/{self.template.id}"
    instruction = (p3.template_instruction(self.template)
                   if self.instruction == p3.INSTRUCTION_TEMPLATE else None)
    total = skipped = 0
    for index, row in self.reader.rows(split, shard_index, num_shards):
      total += 1
      rendered = p3.render(self.template, row, seed=index)
      if rendered is None or (self.score_eval and not rendered.choices):
        skipped += 1
        continue
      shots = (p3.pick_shots(pool, self.shots, index, same_split, self.seed,
                             salt) if self.shots else ())
      yield p3.make_record(
          self.reader.dataset, self.template, rendered,
          example_id=f"{key}-{split}-{index}", shots=shots,
          shots_in_inputs=self.shots_in_inputs, with_choices=self.score_eval,
          instruction=instruction, shot_format=self.few_shot_format)
    p3.log_skipped(f"{salt}/{split}", skipped, total)

  def dataset_fn(self, split, shuffle_files, seed=None, shard_info=None):
    signature = dict(F.RECORD_SIGNATURE)
    if self.score_eval:
      signature[p3.ANSWER_CHOICES] = tf.TensorSpec([None], tf.string)
    ds = tf.data.Dataset.from_generator(
        functools.partial(self.records, split,
                          shard_info.index if shard_info else 0,
                          shard_info.num_shards if shard_info else 1),
        output_signature=signature)
    if shuffle_files:
      ds = ds.shuffle(_SHUFFLE_ROWS, seed=seed, reshuffle_each_iteration=True)
    return ds


def _rate(reader: RowReader, num_templates: int, max_examples: int,
          task: seqio.Task) -> float:
  """T0's mixing rate of one template task (rows are counted when mixing)."""
  del task
  return float(p3.t0_rate(reader.num_rows("train"), num_templates,
                          max_examples))


def _task_name(dataset: p3.P3Dataset, template: p3.Template,
               taken: set[str], suffix: str = "") -> str:
  """``p3_<dataset>_<template><suffix>``, unique among ``taken``.

  A dataset may be both trained on and held out (``suffix`` ``_score_eval``):
  its two tasks of one template keep the same stem.
  """
  stem = f"p3_{dataset.task_key}_{p3.task_clean(template.name)}"
  if stem + suffix in taken:  # Two template names that clean to one string.
    stem = f"{stem}_{p3.task_clean(template.id)[:8]}"
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
                train_datasets: Sequence[p3.P3Dataset] = p3.T0_TRAIN_DATASETS,
                eval_datasets: Sequence[p3.P3Dataset] = p3.T0_EVAL_DATASETS,
                shots: Sequence[int] = DEFAULT_SHOTS,
                max_shot_pool: int = 1000,
                use_hf_datasets: bool = False,
                seed: int = 0,
                max_examples_per_dataset: int = MAX_EXAMPLES_PER_DATASET,
                instruction: str = p3.INSTRUCTION_TEMPLATE,
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
      (dataset, template) (``p3.template_instruction``; a template that cannot
      be blanked falls back, with a warning, to the per-example form);
      ``"prompt"`` each example's rendered prompt (the per-example form).
    few_shot_format: ``"flan"`` (HINT's FLAN-style exemplars, the default) or
      ``"newline"`` (``<prompt>\\n<target>`` blocks); see ``p3.format_shots``.

  Returns:
    Registered names (empty when no dataset has both templates and data).

  Raises:
    ValueError: an unknown ``instruction`` or ``few_shot_format``.
  """
  if instruction not in p3.INSTRUCTIONS:
    raise ValueError(f"Unknown P3 instruction {instruction!r}; use one of "
                     f"{p3.INSTRUCTIONS}.")
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
      reader = RowReader(dataset, data_dir, use_hf_datasets)
      splits = reader.available_splits()
      if score_eval:
        splits = tuple(s for s in splits if s == "validation")
      elif "train" not in splits:
        splits = ()
      path = p3.template_path(templates_dir, dataset.name, dataset.subset)
      if not splits or not os.path.exists(path):
        logging.debug("P3: skipping %s (templates or data missing).",
                      dataset.task_key)
        continue
      templates = p3.load_templates(templates_dir, dataset.name,
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
                  extra_preprocessors=extra))
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
