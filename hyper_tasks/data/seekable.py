"""The seekable input order: position -> (task, example) computed, not replayed.

seqio's order (shuffle buffers, ``sample_from_datasets``) can only be reached by
replaying every example before a position. When the preprocessing cache is in
use (``pipeline.input_cache``) the pipeline uses this order instead, over the
examples of each task in source order (``cache.CachedSplit`` or, uncached,
``MemoryStore``, the same examples rendered in memory), so a resume at any step
starts at once:

* a task's stream is its epochs one after another; epoch ``e`` is a permutation
  of its ``N`` examples drawn from ``(seed, task name, e)`` (identity without
  shuffling). Position ``p`` is ``perm_e[p % N]`` with ``e = p // N``.
* a mixture's stream is blocks of ``BLOCK`` positions. Block ``b`` draws, from
  ``(seed, b)``, how many of its positions each task gets (a multinomial with the
  mixing rates) and a random arrangement of them: the same distribution as
  drawing a task independently at every position, as seqio's sampler does. A
  task's examples in block ``b`` continue its stream after those of blocks
  ``< b``, so seeking to position ``q`` adds the counts of the ``q // BLOCK``
  blocks before it (one multinomial each) and arranges one block.
* with a finite ``num_epochs`` a task stops after ``num_epochs * N`` examples and
  its later positions are dropped (the others go on, as seqio's sampler does).

The seqio order and this one hold the same examples with the same frequencies
but not in the same sequence: a run that uses the cache, or ``seekable_order``,
is reproducible and resumable in this order, and parity with an uncached run
holds when both use it (``tests/data/test_cache.py``).
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from hyper_tasks.data import cache
from hyper_tasks.data import cache_writer
from hyper_tasks.data import converters
from hyper_tasks.data import features as F
from hyper_tasks.data import registry
from hyper_tasks.data import vocab as vocab_lib

BLOCK = 1 << 16
# Records handed to tf.data per generator element when examples are unbatched.
CHUNK = 256


def _rng(*parts) -> np.random.Generator:
  digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
  return np.random.Generator(np.random.Philox(
      key=int.from_bytes(digest[:16], "little")))


class MemoryStore:
  """A task split's examples in source order, rendered in memory (uncached):
  the records the cache would hold, without the ``_pretokenized`` copies."""

  def __init__(self, task: seqio.Task, split: str,
               sequence_lengths: Mapping[str, int]):
    ds = cache_writer.shard_dataset(task, split, sequence_lengths)
    self._records = [cache_writer.serialize(ex)
                     for ex in ds.as_numpy_iterator()]
    self.num_examples = len(self._records)

  def records(self, indices: Sequence[int]) -> list[bytes]:
    return [self._records[i] for i in np.asarray(indices).tolist()]


Store = Union[cache.CachedSplit, MemoryStore]


class TaskOrder:
  """Epoch permutations of one task's ``size`` examples."""

  def __init__(self, name: str, size: int, shuffle: bool, seed: Optional[int]):
    self.name, self.size, self.shuffle, self.seed = name, size, shuffle, seed
    self._perms: collections.OrderedDict[int, np.ndarray] = (
        collections.OrderedDict())

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) >= 2:
        self._perms.popitem(last=False)
      self._perms[epoch] = _rng(self.seed, self.name, epoch).permutation(
          self.size)
    return self._perms[epoch]

  def indices(self, start: int, stop: int) -> np.ndarray:
    """Example indices at stream positions ``[start, stop)``."""
    if not self.shuffle:
      return np.arange(start, stop, dtype=np.int64) % self.size
    out, p = [], start
    while p < stop:
      epoch, r = divmod(p, self.size)
      take = min(stop - p, self.size - r)
      out.append(self._perm(epoch)[r:r + take])
      p += take
    return (np.concatenate(out) if out else np.zeros([0], np.int64)).astype(
        np.int64)


class Order:
  """The seekable order over tasks with ``sizes`` examples and mixing ``rates``.

  ``chunks(start)`` yields ``(task ids, example indices)`` arrays from example
  position ``start`` on.
  """

  def __init__(self, names: Sequence[str], sizes: Sequence[int],
               rates: Sequence[float], *, shuffle: bool, seed: Optional[int],
               num_epochs: Optional[int]):
    if not names or min(sizes) <= 0:
      raise ValueError(f"Every task needs examples: sizes {dict(zip(names, sizes))}.")
    self.tasks = [TaskOrder(n, s, shuffle, seed) for n, s in zip(names, sizes)]
    rates = np.asarray(rates, np.float64)
    self.rates = rates / rates.sum()
    self.mix_seed = seed if seed is not None else 42
    self.limits = np.asarray(
        [np.iinfo(np.int64).max if num_epochs is None else s * num_epochs
         for s in sizes], np.int64)

  def _counts(self, block: int) -> tuple[np.random.Generator, np.ndarray]:
    rng = _rng(self.mix_seed, "mixture", block)
    return rng, rng.multinomial(BLOCK, self.rates).astype(np.int64)

  def chunks(self, start: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if len(self.tasks) == 1:
      yield from self._single(start)
      return
    cum = np.zeros(len(self.tasks), np.int64)
    block = 0
    while True:  # Seek: whole blocks before ``start``, one multinomial each.
      if np.all(cum >= self.limits):
        return
      _, counts = self._counts(block)
      kept = int(np.sum(np.minimum(cum + counts, self.limits)
                        - np.minimum(cum, self.limits)))
      if start < kept:
        break
      start -= kept
      cum += counts
      block += 1
    while not np.all(cum >= self.limits):
      tasks, examples = self._block(block, cum)
      yield tasks[start:], examples[start:]
      start = 0
      cum += self._counts(block)[1]
      block += 1

  def _single(self, start: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    task, limit = self.tasks[0], int(self.limits[0])
    p = start
    while p < limit:
      stop = min(limit, p + BLOCK)
      examples = task.indices(p, stop)
      yield np.zeros(len(examples), np.int64), examples
      p = stop

  def _block(self, block: int, cum: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    rng, counts = self._counts(block)
    tasks = rng.permutation(np.repeat(np.arange(len(self.tasks)), counts))
    positions = np.argsort(tasks, kind="stable")  # each task's entries in order
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    examples = np.full(len(tasks), -1, np.int64)
    for t in np.flatnonzero(counts):
      stop = min(int(cum[t] + counts[t]), int(self.limits[t]))
      if stop <= cum[t]:
        continue
      mine = positions[starts[t]:starts[t] + counts[t]][:stop - int(cum[t])]
      examples[mine] = self.tasks[t].indices(int(cum[t]), stop)
    keep = examples >= 0
    return tasks[keep], examples[keep]


def serialized_batches(stores: Sequence[Store], order: Order, start: int,
                       batch_size: int, drop_remainder: bool,
                       rows: slice = slice(None)) -> Iterator[np.ndarray]:
  """Serialized records in ``order`` from example ``start``, ``batch_size`` at a
  time (a final partial batch unless ``drop_remainder``); of each batch only
  ``rows`` are read (a host's slice of the global batch)."""
  pending_t, pending_e = [], []
  have = 0
  for tasks, examples in order.chunks(start):
    pending_t.append(tasks)
    pending_e.append(examples)
    have += len(tasks)
    if have < batch_size:
      continue
    tasks, examples = np.concatenate(pending_t), np.concatenate(pending_e)
    whole = len(tasks) // batch_size * batch_size
    for i in range(0, whole, batch_size):
      yield _gather(stores, tasks[i:i + batch_size][rows],
                    examples[i:i + batch_size][rows])
    pending_t, pending_e = [tasks[whole:]], [examples[whole:]]
    have = len(tasks) - whole
  if have and not drop_remainder:
    yield _gather(stores, np.concatenate(pending_t)[rows],
                  np.concatenate(pending_e)[rows])


def _gather(stores: Sequence[Store], tasks: np.ndarray,
            examples: np.ndarray) -> np.ndarray:
  # An object array filled element by element: converting a list of bytes
  # would make fixed-width bytes_ values and strip trailing NUL bytes.
  out = np.empty(len(tasks), dtype=object)
  for t in np.unique(tasks).tolist():
    where = np.flatnonzero(tasks == t)
    for i, record in zip(where.tolist(), stores[t].records(examples[where])):
      out[i] = record
  return out


TOKEN_SPEC = {k: tf.io.RaggedFeature(tf.int64) for k in F.TOKEN_FEATURES}


def parse_tokens(serialized: tf.Tensor) -> dict[str, tf.RaggedTensor]:
  """Token features ``[B, None]`` int32 of a batch of serialized records."""
  parsed = tf.io.parse_example(serialized, TOKEN_SPEC)
  return {k: tf.cast(v, tf.int32) for k, v in parsed.items()}


def record_batches(stores: Sequence[Store], order: Order, start: int,
                   batch_size: int, drop_remainder: bool,
                   rows: slice = slice(None)) -> tf.data.Dataset:
  """``serialized_batches`` as a ``tf.data.Dataset`` of string vectors."""
  return tf.data.Dataset.from_generator(
      lambda: serialized_batches(stores, order, start, batch_size,
                                 drop_remainder, rows),
      output_signature=tf.TensorSpec([None], tf.string))


def examples_dataset(stores: Sequence[Store], order: Order,
                     start: int = 0) -> tf.data.Dataset:
  """Examples (token features as 1-D int32) in ``order`` from ``start``."""
  ds = record_batches(stores, order, start, CHUNK, drop_remainder=False)
  return ds.map(parse_tokens, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def model_batches(stores: Sequence[Store], order: Order, start_batch: int,
                  batch_size: int, lengths: Mapping[str, int],
                  converter: converters.HyperEncDecFeatureConverter,
                  drop_remainder: bool, shard_id: int = 0,
                  num_shards: int = 1) -> tf.data.Dataset:
  """Unpacked model-feature batches from batch ``start_batch`` on (a seek):
  ``converter.convert_batched``'s arrays, parsed and converted a batch at a
  time. ``batch_size`` is the global batch; with ``num_shards > 1`` this host
  reads and converts only its contiguous slice ``shard_id`` of each (its
  truncation counts are then its own examples')."""
  per_host = batch_size // num_shards
  rows = slice(shard_id * per_host, (shard_id + 1) * per_host)
  ds = record_batches(stores, order, start_batch * batch_size, batch_size,
                      drop_remainder, rows if num_shards > 1 else slice(None))

  def convert(serialized):
    out, truncated = converters.model_features(
        parse_tokens(serialized), lengths, converter.bos_id,
        converter._eos_id)  # pylint: disable=protected-access
    converter.truncation.update_batch(truncated)
    return out
  return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def plan(name: str, provider, tasks: Sequence[seqio.Task], split: str,
         lengths: Mapping[str, int], *, cache_dirs: Sequence[str],
         seekable_order: bool, shuffle: bool, seed: Optional[int],
         num_epochs: Optional[int]) -> Optional[tuple[list[Store], Order]]:
  """The stores and order of ``name``'s tasks, or None for seqio's pipeline.

  Tasks found in ``cache_dirs`` are read from the cache. When some are not:
  with ``seekable_order`` they are rendered in memory (logged); without it the
  whole name is read uncached in seqio's order (logged, naming them).
  """
  found = {t.name: cache.find(t, split, lengths, cache_dirs) if cache_dirs
           else None for t in tasks}
  missing = [n for n, v in found.items() if v is None]
  if cache_dirs and missing:
    logging.warning(
        "data: %s/%s: %d of %d tasks are NOT in the preprocessing cache %s (%s); "
        "%s.", name, split, len(missing), len(tasks), list(cache_dirs),
        ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
        "rendering them in memory (seekable order)" if seekable_order else
        "reading it uncached in seqio's order (a resume replays batches)")
  elif cache_dirs:
    logging.info("data: %s/%s is read from the preprocessing cache %s (%d "
                 "tasks): seekable order, a resume seeks.", name, split,
                 list(cache_dirs), len(tasks))
  if missing and not seekable_order:
    return None
  stores = [found[t.name] or MemoryStore(t, split, lengths) for t in tasks]
  rates = (provider._get_all_mixing_rates(tasks)  # pylint: disable=protected-access
           if isinstance(provider, seqio.Mixture) else [1.0])
  keep = [i for i, st in enumerate(stores) if st.num_examples > 0]
  for i in sorted(set(range(len(stores))) - set(keep)):
    logging.warning("data: %s/%s has no examples; left out of %s.",
                    tasks[i].name, split, name)
  stores = [stores[i] for i in keep]
  order = Order([tasks[i].name for i in keep], [s.num_examples for s in stores],
                [rates[i] for i in keep], shuffle=shuffle, seed=seed,
                num_epochs=num_epochs)
  return stores, order


def read_cached_examples(split: cache.CachedSplit,
                         max_examples: Optional[int]) -> list[dict]:
  """The first examples of a cached split in source order, every feature
  (seqio's info-file descriptions), as numpy."""
  n = split.num_examples if max_examples is None else min(
      max_examples, split.num_examples)
  spec = {}
  for key, desc in split.features.items():
    dtype = tf.string if desc["dtype"] == "string" else (
        tf.float32 if desc["dtype"].startswith("float") else tf.int64)
    spec[key] = (tf.io.RaggedFeature(dtype) if desc["shape"]
                 else tf.io.FixedLenFeature([], dtype))
  out = []
  for begin in range(0, n, 1024):
    records = split.records(range(begin, min(n, begin + 1024)))
    parsed = tf.io.parse_example(tf.constant(records, tf.string), spec)
    columns = {k: (v.to_list() if isinstance(v, tf.RaggedTensor) else
                   v.numpy().tolist()) for k, v in parsed.items()}
    for i in range(len(records)):
      out.append({k: (np.asarray(col[i], np.int32)
                      if split.features[k]["shape"] else col[i])
                  for k, col in columns.items()})
  logging.info("data cache: read %d examples of %s from %s.", len(out),
               split.split, split.directory)
  return out


def from_cache(example: Mapping[str, Any], task: seqio.Task) -> dict[str, Any]:
  """A cached record as ``load_examples`` gives it (text from the
  ``_pretokenized`` copies; token-level tasks decoded)."""
  if not registry.is_text_level(task.name):
    return decode_tokens({k: v for k, v in example.items()
                          if not k.endswith(cache.PRETOKENIZED)},
                         task.output_features[F.TARGETS].vocabulary)
  out = {k: v for k, v in example.items()
         if k not in F.TOKEN_FEATURES and not k.endswith(cache.PRETOKENIZED)}
  for key in F.TOKEN_FEATURES:
    out[key] = example[key + cache.PRETOKENIZED]
  return F.decode_example(out)


def decode_tokens(example: Mapping[str, Any],
                  vocabulary: seqio.Vocabulary) -> dict[str, Any]:
  """A tokenized example as plain Python, its token features decoded."""
  out = F.decode_example({k: v for k, v in example.items()
                          if k not in F.TOKEN_FEATURES})
  for key in F.TOKEN_FEATURES:
    ids = [int(i) for i in example[key] if i not in (vocab_lib.PAD_ID,)]
    if ids and ids[-1] == vocab_lib.EOS_ID:
      ids = ids[:-1]
    out[key] = vocabulary.decode(ids)
  if out.get(F.REFERENCES) == "[]":
    # Token-level tasks have no text references; the decoded target is one.
    out[F.REFERENCES] = json.dumps([out[F.TARGETS]], ensure_ascii=False)
  return out
