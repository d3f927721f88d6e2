"""Untrimmed tokenized examples of a seqio task or mixture (what batching reads).

``task_dataset`` is ``Task.get_dataset`` / ``Mixture.get_dataset`` without
trimming (the feature converter trims and counts, converters.py), except that a
mixture of text tasks is mixed as text and tokenized once, after sampling
(``text_mixture``; the same examples in the same order as seqio's).
``text_dataset`` is a task's examples before tokenization (``load_examples``).
"""
from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence, Union

import seqio
import tensorflow as tf

from hyper_tasks.data import preprocessors as P

Provider = Union[seqio.Task, seqio.Mixture]


def task_dataset(provider: Provider, split: str,
                 sequence_lengths: Mapping[str, int], *, shuffle: bool,
                 seed: Optional[int], num_epochs: Optional[int],
                 shard_info: Optional[seqio.ShardInfo],
                 passthrough: Sequence[str] = (),
                 text_level: bool = True) -> tf.data.Dataset:
  """Untrimmed tokenized examples of a task or mixture.

  A mixture of text tasks is mixed before tokenization (``text_mixture``, the
  same examples in the same order as seqio's ``Mixture.get_dataset``) unless
  ``text_level`` is False.
  """
  kwargs = dict(sequence_length=sequence_lengths, split=split, shuffle=shuffle,
                seed=seed, shard_info=shard_info, num_epochs=num_epochs,
                trim_output_features=False)
  if isinstance(provider, seqio.Mixture):
    tasks = text_mixture_tasks(provider, split) if text_level else None
    if tasks:
      return text_mixture(provider, tasks, split, sequence_lengths,
                          shuffle=shuffle, seed=seed, num_epochs=num_epochs,
                          shard_info=shard_info, passthrough=passthrough)
    return provider.get_dataset(passthrough_features=list(passthrough),
                                log_mixing_proportions=False, **kwargs)
  return provider.get_dataset(**kwargs)


# Mixing text before tokenization.
#
# seqio's Mixture.get_dataset builds every member task's whole pipeline (source,
# repeat, tokenization, shuffle, prefetch) and samples from them. Our text tasks
# tokenize last, with one preprocessor and one vocabulary for all of them, so the
# tokenizer can run once, after sampling, on the sampled records. Nothing else
# changes: shuffles and the sampler draw the same random numbers whatever the
# examples hold, and tokenization maps each example on its own, so the examples
# and their order are seqio's (tests/data/test_mixing.py compares both).
#
# Per member task that saves a tokenization graph (about 0.25 s to build and
# more to instantiate; each embeds its own copy of the SentencePiece model), the
# wait for a 128-example tokenization mini-batch of that task before its first
# example (16 epochs of an 8-row task), and a prefetch that kept the task's
# source running in the background. For T0's ~300 template tasks that was
# minutes before the first batch.


def text_mixture_tasks(mixture: seqio.Mixture,
                       split: str) -> Optional[list[seqio.Task]]:
  """The member tasks with ``split`` if the mixture can be mixed as text.

  That is: a plain ``seqio.Mixture`` whose tasks are not cached, end with the
  same batched tokenizer (``preprocessors.tokenize_batched``) and no other, and
  have equal output features. None otherwise (seqio's path).
  """
  if type(mixture) is not seqio.Mixture:  # pylint: disable=unidiomatic-typecheck
    return None
  tasks = [t for t in mixture.tasks if split in t.splits]
  if not tasks:
    return None
  tokenizer = tasks[0].preprocessors[-1] if tasks[0].preprocessors else None
  if tokenizer is None or not _is_batched_tokenizer(tokenizer):
    return None
  for task in tasks:
    preps = task.preprocessors
    if (task.supports_caching or not preps or preps[-1] is not tokenizer
        or any(is_tokenizer(p) for p in preps[:-1])
        or task.output_features != tasks[0].output_features):
      return None
  return tasks


def _is_batched_tokenizer(prep) -> bool:
  return getattr(prep, "func", prep) is P.tokenize_batched


def _task_text(task: seqio.Task, split: str,
               sequence_lengths: Mapping[str, int], *, shuffle: bool,
               seed: Optional[int], num_epochs: Optional[int],
               shard_info: Optional[seqio.ShardInfo]) -> tf.data.Dataset:
  """``task.get_dataset`` (uncached, untrimmed) without its tokenizer, the
  validation that follows it and the final prefetch."""
  source = task.source
  at_source = (source.supports_arbitrary_sharding or shard_info is None or
               len(source.list_shards(split=split)) >= shard_info.num_shards)
  if at_source:
    ds = source.get_dataset(split=split, shuffle=shuffle, seed=seed,
                            shard_info=shard_info)
  else:
    ds = source.get_dataset(split=split, shuffle=shuffle, seed=seed)
    ds = ds.shard(shard_info.num_shards, shard_info.index)
  num_shards = shard_info.num_shards if shard_info else 1
  num_examples = source.num_input_examples(split)
  max_cached = getattr(seqio.dataset_providers, "_MAX_EXAMPLES_TO_MEM_CACHE",
                       10_000)
  if num_examples and num_examples < max_cached * num_shards:
    ds = ds.cache()
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  with seqio.utils.map_seed_manager(seed):
    ds = task._preprocess_dataset(  # pylint: disable=protected-access
        ds, task.preprocessors[:-1], sequence_length=sequence_lengths)
  if shuffle:
    if task.shuffle_buffer_size is None:
      if not source.performs_internal_shuffling:
        raise ValueError(
            f"Shuffling is disallowed for Task '{task.name}' since its "
            "`shuffle_buffer_size` was set to `None` on construction.")
    else:
      ds = ds.shuffle(task.shuffle_buffer_size, seed=seed)
  return ds


def text_mixture(mixture: seqio.Mixture, tasks: Sequence[seqio.Task],
                 split: str, sequence_lengths: Mapping[str, int], *,
                 shuffle: bool, seed: Optional[int],
                 num_epochs: Optional[int],
                 shard_info: Optional[seqio.ShardInfo],
                 passthrough: Sequence[str] = ()) -> tf.data.Dataset:
  """``mixture.get_dataset`` (untrimmed) with tokenization after sampling."""
  mixture._check_compatible_features()  # pylint: disable=protected-access
  for task in mixture.tasks:
    if split not in task.splits:
      logging.warning("Task %s has no '%s' split, skipping.", task.name, split)
  keep = set(tasks[0].output_features) | set(passthrough)

  def filter_features(ex):
    return {k: v for k, v in ex.items() if k in keep}

  datasets = []
  for task in tasks:
    try:
      datasets.append(_task_text(
          task, split, sequence_lengths, shuffle=shuffle, seed=seed,
          num_epochs=num_epochs, shard_info=shard_info))
    except:
      logging.error("Failed to load task '%s' as part of mixture '%s'",
                    task.name, mixture.name)
      raise
  # Tasks with one record structure are filtered once, after tokenization
  # (as seqio filters each task's tokenized examples).
  if any(d.element_spec != datasets[0].element_spec for d in datasets):
    datasets = [d.map(filter_features, num_parallel_calls=tf.data.AUTOTUNE)
                for d in datasets]
  rates = mixture._get_all_mixing_rates(tasks)  # pylint: disable=protected-access
  if seed is not None:
    sample_seed = seed
  elif shuffle:
    sample_seed = None
  else:
    sample_seed = 42
  ds = mixture._sample_fn(datasets, rates, sample_seed)  # pylint: disable=protected-access
  first = tasks[0]
  with seqio.utils.map_seed_manager(seed):
    ds = first._preprocess_dataset(  # pylint: disable=protected-access
        ds, first.preprocessors[-1:], sequence_length=sequence_lengths)
  ds = first._validate_preprocessing(ds)  # pylint: disable=protected-access
  return ds.map(filter_features, num_parallel_calls=tf.data.AUTOTUNE)


def text_dataset(task: seqio.Task, split: str) -> tf.data.Dataset:
  """A task's examples after its text-level preprocessors, unshuffled."""
  ds = task.source.get_dataset(split=split, shuffle=False)
  for prep in task.preprocessors:
    if is_tokenizer(prep):
      break
    ds = prep(ds)
  return ds


def is_tokenizer(prep) -> bool:
  fn = getattr(prep, "func", prep)
  return fn in (P.tokenize_batched, seqio.preprocessors.tokenize,
                seqio.preprocessors.tokenize_and_append_eos,
                seqio.preprocessors.append_eos)
