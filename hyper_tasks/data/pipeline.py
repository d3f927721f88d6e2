"""The plain-Python data API the trainer and evaluator call.

  register_all(...)            idempotent registration (register.py)
  get_dataset(name, split, sequence_lengths, batch_size, ...)
      -> BatchIterator of dicts of numpy int32 arrays, the converter's outputs
         (converters.py), batch axis exactly ``batch_size``
  load_examples(name, split, max_examples) -> list of plain-Python records
      (strings before tokenization, with all metadata; features.py)
  tokenize(texts, vocabulary) / detokenize(ids, vocabulary)

``get_dataset`` is deterministic for a seed: the same batches in the same order on
every call (seqio shuffles with the seed, mixtures sample with it, tf.data keeps
order), so a trainer resumes by skipping batches (``start_batch``). Sharding
(``shard_id`` / ``num_shards``, one per host) slices each *global* batch of
``batch_size * num_shards`` examples: every host reads the same global stream and
keeps its contiguous ``batch_size`` rows, so the global batch at step ``s`` does not
depend on the number of hosts (a run resumes exactly on another host count).

With the preprocessing cache (``input_cache``, gin macro ``CACHE_DIRS``; built
by ``hyper-tasks cache``, cache.py) the examples come from the cache in the
seekable order of seekable.py, so ``start_batch`` seeks instead of replaying
(with packing or instruction groups it still skips batches, cheaply), and each
host reads only its rows of every global batch (the same rows). That order
is not seqio's shuffle-buffer order; ``input_cache.seekable_order`` gives it to
uncached tasks too (rendered in memory), which is how uncached and cached runs
are compared.

Pieces: task_datasets.py (a task's or mixture's tokenized examples, text
mixtures tokenized after sampling), instruction_groups.py (batches whose
consecutive examples share an instruction), converters.py (examples -> model
features). Here: names and splits, the batched ``tf.data`` pipeline and its
iterator, plain-Python examples, tokenization for evaluation.

Names are resolved against seqio's registries. If a name is unknown, the embedded
default is registered (it needs nothing) and the lookup retried, so the CPU demo
works without an explicit ``register_all()``; any other source must be registered
first.
"""
from __future__ import annotations

import atexit
import functools
import itertools
import logging
import os
from typing import Any, Iterator, Mapping, Optional, Sequence
import weakref

import gin
import numpy as np
import seqio
import tensorflow as tf

from hyper_tasks.data import cache
from hyper_tasks.data import converters
from hyper_tasks.data import features as F
from hyper_tasks.data import instruction_groups
from hyper_tasks.data import register
from hyper_tasks.data import registry
from hyper_tasks.data import seekable
from hyper_tasks.data import task_datasets
from hyper_tasks.data import vocab as vocab_lib

Provider = task_datasets.Provider

# Lengths used when a caller gives none (load_examples of token-level tasks).
DEFAULT_SEQUENCE_LENGTHS = {F.HYPER_INPUTS: 512, F.INPUTS: 512, F.TARGETS: 128}


def get_provider(name: str) -> Provider:
  """The seqio Task or Mixture named ``name`` (embedded default on demand)."""
  if not _known(name):
    register.register_embedded()
    if not _known(name):
      close = [n for n in itertools.chain(seqio.TaskRegistry.names(),
                                          seqio.MixtureRegistry.names())
               if name.split("_")[0] in n][:10]
      raise KeyError(
          f"No seqio task or mixture named {name!r}. Register its source first "
          f"(hyper_tasks.data.register_all(...)). Similar names: {close}")
  return seqio.get_mixture_or_task(name)


def tasks_of(name: str) -> list[seqio.Task]:
  """The seqio tasks of ``name``: a mixture's members, or the task itself."""
  provider = get_provider(name)
  return (list(provider.tasks) if isinstance(provider, seqio.Mixture)
          else [provider])


def task_vocabulary(name: str) -> seqio.Vocabulary:
  """The targets vocabulary of ``name`` (a mixture's first task)."""
  return tasks_of(name)[0].output_features[F.TARGETS].vocabulary


def check_vocabulary(names: Sequence[str], model_vocab_size: int,
                     where: str) -> None:
  """Refuses tasks whose vocabulary (any feature, any member task) does not fit a
  model with ``model_vocab_size`` embeddings (``vocab.check_fits``)."""
  for name in names:
    for task in tasks_of(name):
      for feature in task.output_features.values():
        vocab_lib.check_fits(feature.vocabulary, model_vocab_size,
                             where=f"{where}, task {task.name}")


def _known(name: str) -> bool:
  return (name in seqio.TaskRegistry.names()
          or name in seqio.MixtureRegistry.names())


def splits(name: str) -> tuple[str, ...]:
  """The splits of a task or mixture (a mixture: those of its first task)."""
  return tuple(tasks_of(name)[0].splits)


def _resolve_split(name: str, split: Optional[str]) -> str:
  return split if split is not None else splits(name)[0]


# tf.data's default pool has one thread per core. Stages that block a thread (the
# Python reader of local jsonl, SentencePiece batches waiting on each other) then
# leave cores idle on small hosts: C4 on 2 cores ran at ~1.6k examples/s with the
# default pool and ~2.1-3.3k/s with 16 threads (benchmarks/data_pipeline.py).
MIN_THREADPOOL_SIZE = 16


def threadpool_size() -> int:
  """Threads of each input pipeline's private pool: at least one per core."""
  return max(MIN_THREADPOOL_SIZE, os.cpu_count() or 1)


@gin.configurable(module="hyper_tasks.data")
def input_cache(cache_dirs: Optional[Sequence[str]] = (),
                seekable_order: bool = False) -> tuple[tuple[str, ...], bool]:
  """Where the preprocessing cache is (gin: ``data.input_cache.cache_dirs =
  %CACHE_DIRS``) and whether uncached tasks use the seekable order too.

  Returns:
    ``(cache_dirs, seekable_order)`` as bound.
  """
  return tuple(d for d in (cache_dirs or ()) if d), bool(seekable_order)


def get_tf_dataset(
    name: str,
    split: Optional[str] = None,
    sequence_lengths: Optional[Mapping[str, int]] = None,
    batch_size: int = 8,
    shuffle: bool = True,
    seed: int = 0,
    num_epochs: Optional[int] = None,
    shard_id: int = 0,
    num_shards: int = 1,
    pack: bool = False,
    drop_remainder: bool = True,
    instruction_group_size: int = 1,
    start_batch: int = 0,
    cache_dirs: Optional[Sequence[str]] = None,
    seekable_order: Optional[bool] = None,
) -> tuple[tf.data.Dataset, converters.TruncationCounter]:
  """``get_dataset`` as a batched ``tf.data.Dataset`` and its truncation counter.

  ``cache_dirs`` / ``seekable_order``: None takes them from ``input_cache()``.
  """
  lengths = converters.check_sequence_lengths(
      sequence_lengths or DEFAULT_SEQUENCE_LENGTHS)
  group = instruction_groups.check_group_size(instruction_group_size,
                                              batch_size, pack)
  if num_shards < 1 or not 0 <= shard_id < num_shards:
    raise ValueError(f"shard_id={shard_id} must be in [0, num_shards={num_shards}).")
  if num_shards > 1 and not drop_remainder:
    raise ValueError("num_shards > 1 slices whole global batches: a final partial "
                     "batch cannot be split between hosts (drop_remainder=True).")
  provider = get_provider(name)
  split = _resolve_split(name, split)
  global_batch_size = batch_size * num_shards  # Each host keeps its slice.
  converter = converters.HyperEncDecFeatureConverter(pack=pack)
  dirs, seekable_order = input_cache() if cache_dirs is None else (
      tuple(cache_dirs), bool(seekable_order))
  tasks = [t for t in tasks_of(name) if split in t.splits]
  planned = seekable.plan(
      name, provider, tasks, split, lengths, cache_dirs=dirs,
      seekable_order=seekable_order, shuffle=shuffle, seed=seed,
      num_epochs=num_epochs) if (dirs or seekable_order) else None
  if planned is not None and not pack and group == 1:
    # Sought, and only this host's rows of each global batch are read.
    ds = seekable.model_batches(*planned, start_batch, global_batch_size,
                                lengths, converter, drop_remainder, shard_id,
                                num_shards)
    start_batch, sliced = 0, True
  else:
    sliced = False
    if planned is not None:
      ds = seekable.examples_dataset(*planned)
    else:
      ds = task_datasets.task_dataset(provider, split, lengths, shuffle=shuffle,
                                      seed=seed, num_epochs=num_epochs,
                                      shard_info=None)
    if group > 1:
      ds = instruction_groups.group_instructions(ds, group,
                                                 lengths[F.HYPER_INPUTS])
    if pack:
      ds = converter(ds, lengths)
      ds = ds.batch(global_batch_size, drop_remainder=drop_remainder)
    else:
      # Same batches as converting example by example, several times faster.
      ds = converter.convert_batched(ds, lengths, global_batch_size,
                                     drop_remainder)
    if group > 1:
      ds = ds.map(functools.partial(instruction_groups.dedupe_instructions,
                                    group_size=group),
                  num_parallel_calls=tf.data.AUTOTUNE)
  if start_batch:
    ds = ds.skip(start_batch)
  if num_shards > 1 and not sliced:
    ds = ds.map(functools.partial(_host_rows, shard_id=shard_id,
                                  num_shards=num_shards),
                num_parallel_calls=tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = threadpool_size()
  ds = ds.with_options(options).prefetch(tf.data.AUTOTUNE)
  return ds, converter.truncation


def _host_rows(batch: dict, shard_id: int, num_shards: int) -> dict:
  """The ``shard_id``-th of ``num_shards`` contiguous slices of every array's batch
  axis (deduplicated instructions, ``[B / g, Lh]``, slice in proportion)."""
  def rows(x):
    per = tf.shape(x)[0] // num_shards
    return x[shard_id * per:(shard_id + 1) * per]
  return {k: rows(v) for k, v in batch.items()}


# Iterators still open. Python code runs inside our pipelines (P3 rendering);
# a tf.data iterator destroyed during interpreter shutdown waits for those calls,
# which can no longer take the GIL, and the process hangs at exit. Closing open
# iterators at exit, before shutdown begins, lets them finish.
_OPEN_ITERATORS: "weakref.WeakSet[BatchIterator]" = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
  for iterator in list(_OPEN_ITERATORS):
    iterator.close()


class BatchIterator(Iterator[dict[str, np.ndarray]]):
  """Iterates numpy batches; reports truncation.

  Attributes:
    dataset: the underlying ``tf.data.Dataset``.
  """

  def __init__(self, dataset: tf.data.Dataset,
               truncation: converters.TruncationCounter, name: str,
               log_every: int = 1000):
    self.dataset = dataset
    self._truncation = truncation
    self._name = name
    self._log_every = log_every
    self._iterator = dataset.as_numpy_iterator()
    self._batches = 0
    _OPEN_ITERATORS.add(self)

  def __iter__(self) -> "BatchIterator":
    return self

  def close(self) -> None:
    """Stops the pipeline and frees its buffers; iteration then ends."""
    self._iterator = None
    _OPEN_ITERATORS.discard(self)

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      raise StopIteration
    try:
      batch = next(self._iterator)
    except StopIteration:
      self.log_truncation()
      raise
    self._batches += 1
    if self._log_every and self._batches % self._log_every == 0:
      self.log_truncation()
    return batch

  def truncation_stats(self) -> dict[str, int]:
    """``{"examples": n, "hyper_inputs": k, "inputs": k, "targets": k}``.

    Counts examples the pipeline has produced so far (it runs a few batches
    ahead of the consumer; exact once a finite dataset is exhausted).
    """
    return self._truncation.as_dict()

  def log_truncation(self) -> None:
    stats = self.truncation_stats()
    if any(stats[k] for k in F.TOKEN_FEATURES):
      logging.info("%s: truncated examples (of %d): %s", self._name,
                   stats["examples"],
                   {k: stats[k] for k in F.TOKEN_FEATURES})


def get_dataset(
    name: str,
    split: Optional[str] = None,
    sequence_lengths: Optional[Mapping[str, int]] = None,
    batch_size: int = 8,
    *,
    start_batch: int = 0,
    **dataset_options,
) -> BatchIterator:
  """Batches of model features for a registered task or mixture.

  Args:
    name: seqio task or mixture name (e.g. ``"sni_def_train"``, ``"toy_train"``).
    split: seqio split; None means the name's first split (``splits(name)``).
    sequence_lengths: ``{"hyper_inputs": Lh, "inputs": Li, "targets": Lt}``.
    batch_size: batch axis of every array (the remainder is dropped unless
      ``drop_remainder=False``).
    start_batch: start at this batch (resuming): from the preprocessing cache
      a seek, otherwise the batches before it are skipped.
    **dataset_options: the rest of :func:`get_tf_dataset`'s settings:
      ``shuffle`` (with ``seed``, which makes the stream reproducible),
      ``num_epochs`` (None repeats forever), ``shard_id`` / ``num_shards`` (this
      host's shard of the input), ``pack`` (baselines; see converters.py),
      ``drop_remainder`` (drop a final partial batch), ``cache_dirs`` /
      ``seekable_order`` (default: ``input_cache()``), and
      ``instruction_group_size``: ``g > 1`` groups every ``g`` consecutive
      examples by instruction and sends each group's instruction once:
      ``hyper_encoder_input_tokens`` is ``[B / g, Lh]``, and the model encodes
      ``B / g`` instructions per batch instead of ``B`` (HINT training with long
      instructions; see ``Transformer.__call__``). Not with packing.

  Returns:
    An iterator of ``{"hyper_encoder_input_tokens": [B, Lh], "encoder_input_tokens":
    [B, Li], "decoder_input_tokens": [B, Lt], "decoder_target_tokens": [B, Lt],
    "decoder_loss_weights": [B, Lt]}`` int32 arrays (plus segment ids and
    positions when packing), with ``truncation_stats()``.
  """
  ds, truncation = get_tf_dataset(name, split, sequence_lengths, batch_size,
                                 start_batch=start_batch, **dataset_options)
  return BatchIterator(ds, truncation, name)


def load_examples(name: str, split: Optional[str] = None,
                  max_examples: Optional[int] = None,
                  sequence_lengths: Optional[Mapping[str, int]] = None
                  ) -> list[dict[str, Any]]:
  """Plain-Python examples, in source order, with every metadata field.

  Text-level tasks are read before tokenization, so strings are exact. Token-level
  tasks (C4-style splitting) are split with ``sequence_lengths`` and decoded.
  A mixture yields its tasks' examples one task after another.

  Returns:
    Dicts with ``hyper_inputs``, ``inputs``, ``targets`` (str), ``task_names``,
    ``references`` (JSON list), ``category``, ``template``, ``example_id`` (str),
    ``choice_index``, ``is_correct``, ``num_choices`` (int).
  """
  split = _resolve_split(name, split)
  out = []
  for task in tasks_of(name):
    if split not in task.splits:
      continue
    remaining = None if max_examples is None else max_examples - len(out)
    if remaining is not None and remaining <= 0:
      break
    cached = _cached_split(task, split, sequence_lengths)
    if cached is not None:
      rows = seekable.read_cached_examples(cached, remaining)
      out.extend(seekable.from_cache(ex, task) for ex in rows)
      continue
    if registry.is_text_level(task.name):
      ds = task_datasets.text_dataset(task, split)
      decode = F.decode_example
    else:
      lengths = converters.check_sequence_lengths(
          sequence_lengths or DEFAULT_SEQUENCE_LENGTHS)
      ds = task_datasets.task_dataset(task, split, lengths, shuffle=False,
                                      seed=None, num_epochs=1, shard_info=None)
      vocabulary = task.output_features[F.TARGETS].vocabulary
      decode = lambda ex, v=vocabulary: seekable.decode_tokens(ex, v)
    if remaining is not None:
      ds = ds.take(remaining)
    out.extend(decode(ex) for ex in ds.as_numpy_iterator())
  return out


def _cached_split(task: seqio.Task, split: str,
                  sequence_lengths: Optional[Mapping[str, int]]
                  ) -> Optional[cache.CachedSplit]:
  """``task``'s split in the preprocessing cache (``input_cache``), if there."""
  dirs, _ = input_cache()
  if not dirs:
    return None
  lengths = converters.check_sequence_lengths(
      sequence_lengths or DEFAULT_SEQUENCE_LENGTHS)
  return cache.find(task, split, lengths, dirs)


def tokenize(texts: Sequence[str],
             vocabulary: vocab_lib.VocabularyLike = vocab_lib.BYTE,
             add_eos: bool = True) -> list[list[int]]:
  """Token ids of each text (Python; for evaluation and tests, not the hot path)."""
  vocabulary = vocab_lib.get_vocabulary(vocabulary)
  out = []
  for text in texts:
    ids = list(vocabulary.encode(text))
    out.append(ids + [vocabulary.eos_id] if add_eos else ids)
  return out


def detokenize(ids: Sequence[Sequence[int]],
               vocabulary: vocab_lib.VocabularyLike = vocab_lib.BYTE
               ) -> list[str]:
  """Texts of token-id sequences (stops at EOS, ignores padding)."""
  vocabulary = vocab_lib.get_vocabulary(vocabulary)
  out = []
  for seq in ids:
    seq = [int(i) for i in seq]
    if vocab_lib.EOS_ID in seq:
      seq = seq[:seq.index(vocab_lib.EOS_ID)]
    out.append(vocabulary.decode([i for i in seq if i != vocab_lib.PAD_ID]))
  return out


def list_names(pattern: Optional[str] = None) -> dict[str, list[str]]:
  """Names this package registered: ``{"tasks": [...], "mixtures": [...]}``."""
  return registry.registered_names(pattern)
