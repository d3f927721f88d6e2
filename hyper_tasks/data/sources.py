"""seqio data sources for records built in Python, and the standard text Task.

Most sources here (SNI files, promptsource renderings, toy generators) produce
text-level records in Python once, then serve them from memory or a generator.
``seqio.FunctionDataSource`` fits, with two gaps this subclass closes:

* it cannot shard at the source (seqio then reads every example on every host and
  drops the others), and
* it logs a warning on every shuffled read, although our functions shuffle the
  whole in-memory split (see ``features.records_to_dataset``), not a window.

``RecordsSource`` passes ``shard_info`` to the function and declares internal
shuffling. ``text_task_kwargs`` gives the ``seqio.TaskRegistry.add`` arguments of a
text task: the source, batched tokenization with EOS, and the output features.
"""
from __future__ import annotations

import inspect
from typing import Callable, Iterable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from hyper_tasks.data import features as F
from hyper_tasks.data import preprocessors as P

# dataset_fn(split, shuffle_files, seed, shard_info) -> tf.data.Dataset
RecordsFn = Callable[..., tf.data.Dataset]


class RecordsSource(seqio.FunctionDataSource):
  """A FunctionDataSource whose function shards and shuffles the whole split.

  ``dataset_fn(split, shuffle_files, seed, shard_info)`` must return the records
  of ``shard_info`` (all of them when it is None), fully shuffled when
  ``shuffle_files`` is set.
  """

  def __init__(self, dataset_fn: RecordsFn, splits: Iterable[str],
               num_input_examples: Optional[Mapping[str, int]] = None):
    params = inspect.signature(dataset_fn).parameters
    for arg in ("split", "shuffle_files", "seed", "shard_info"):
      if arg not in params:
        raise ValueError(f"dataset_fn must accept {arg!r}.")
    super().__init__(dataset_fn, splits=splits,
                     num_input_examples=num_input_examples,
                     caching_permitted=False)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  @property
  def performs_internal_shuffling(self) -> bool:
    return True

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None,
                  *, sequence_length=None, use_cached=False,
                  num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # Handled by the Task.
    if split not in self.splits:
      raise ValueError(f"Unknown split {split!r}; this source has {self.splits}.")
    return self._dataset_fn(split=split, shuffle_files=shuffle, seed=seed,
                            shard_info=shard_info)


def records_fn(records_for_split: Callable[[str], Sequence[dict]]) -> RecordsFn:
  """A RecordsSource function over in-memory records, ``records_for_split(split)``."""

  def dataset_fn(split, shuffle_files, seed=None, shard_info=None):
    records = records_for_split(split)
    return F.records_to_dataset(
        records, shuffle=shuffle_files, seed=seed,
        shard_index=shard_info.index if shard_info else 0,
        num_shards=shard_info.num_shards if shard_info else 1)

  return dataset_fn


def text_task_kwargs(source: seqio.DataSource,
                     vocabulary: seqio.Vocabulary,
                     extra_preprocessors: Sequence[Callable] = (),
                     shuffle_buffer_size: Optional[int] = 1000) -> dict:
  """``seqio.TaskRegistry.add`` arguments for a task over text records.

  ``extra_preprocessors`` run on text before tokenization (e.g. rank-
  classification expansion). ``shuffle_buffer_size`` is seqio's example shuffle
  after preprocessing; None leaves shuffling to the source (a
  ``RecordsSource`` shuffles its split).
  """
  return dict(
      source=source,
      preprocessors=[*extra_preprocessors, P.tokenize_batched],
      output_features=F.output_features(vocabulary),
      shuffle_buffer_size=shuffle_buffer_size,
  )
