"""The preprocessing cache on disk: layout, settings, checks, random access.

A task's cache directory is seqio's cached-task layout (seqio reads it with its
own ``_CachedDataSource``) plus what seeking needs::

  <root>/<task name>/
    info.<split>.json           seqio: num_shards, features, seqio_version; and
                                "hyper_tasks": the settings below + shard counts
    stats.<split>.json          seqio: examples, <feature>_tokens
    <split>.tfrecord-KKKKK-of-NNNNN     tf.train.Example records (seqio)
    COMPLETED                   seqio: every split asked for is complete
    hyper_tasks.<split>.json    the settings, written before the first shard
    shards/<split>-KKKKK-of-NNNNN.offsets.npy   byte offset of every record,
                                                then the file size
    shards/<split>-KKKKK-of-NNNNN.done.json     the shard's completion marker

Records hold the task's tokenized, untrimmed examples (what ``task_datasets``
gives the feature converter: token features as int32 sequences, plus the
metadata) and, for text-level tasks, ``<feature>_pretokenized`` strings, so
evaluation reads the exact text back. When each example the source gives
makes one record (SNI, P3 training tasks), shard ``k`` of ``n`` holds examples
``k, k + n, ...`` of the source's output, so example ``j`` of the task's order
(the uncached pipeline's, unshuffled) is record ``j // n`` of shard ``j % n``
("interleaved"). Otherwise (rank-classification rows, C4 cutting) the source is
sharded at its input and the task's order is the shards one after another
("concatenated"; the uncached order when ``n`` is 1, which rank tasks always
get).

Settings (``hyper_tasks.<split>.json``, and again in the info file): the task,
the split, the vocabulary (kind, size, SentencePiece sha256), the sequence
lengths and a fingerprint of the task's registration key, source and
preprocessors. A cache whose settings differ from the task's is refused
(``CacheMismatchError`` names the directory and the field); a directory without
``COMPLETED``, a missing or truncated shard, or an info file that disagrees with
the shards is a ``CacheError`` naming the file.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import mmap
import os
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import seqio

from hyper_tasks.data import features as F
from hyper_tasks.data import registry
from hyper_tasks.data import task_datasets
from hyper_tasks.data import vocab as vocab_lib

FORMAT_VERSION = 1
COMPLETED = "COMPLETED"
PRETOKENIZED = "_pretokenized"
INTERLEAVED = "interleaved"
CONCATENATED = "concatenated"
# tf.train.Example records are framed as length (8 bytes) + CRC (4), data, CRC (4).
RECORD_HEAD, RECORD_TAIL = 12, 4


class CacheError(ValueError):
  """A cache directory that cannot be read: incomplete, missing or bad files."""


class CacheMismatchError(CacheError):
  """A cache built with other settings (vocabulary, lengths, task)."""


def task_dir(root: str, task_name: str) -> str:
  """The cache directory of ``task_name`` under ``root`` (seqio's rule)."""
  return os.path.join(root, seqio.utils.get_task_dir_from_name(task_name))


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f"{split}.tfrecord-{index:05d}-of-{num_shards:05d}"


def shard_path(directory: str, split: str, index: int, num_shards: int) -> str:
  return os.path.join(directory, shard_name(split, index, num_shards))


def marker_path(directory: str, split: str, index: int, num_shards: int,
                what: str = "done.json") -> str:
  """``shards/<split>-K-of-N.<what>``: the completion marker or the offsets."""
  return os.path.join(directory, "shards",
                      f"{split}-{index:05d}-of-{num_shards:05d}.{what}")


def settings_path(directory: str, split: str) -> str:
  return os.path.join(directory, f"hyper_tasks.{split}.json")


def read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise CacheError(f"Cache file {path} is missing.") from None
  except ValueError as e:
    raise CacheError(f"Cache file {path} is not valid JSON: {e}") from None


def write_json(path: str, value: Any) -> None:
  """Writes atomically (a temporary file renamed), so readers never see half."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


# Settings.

def vocabulary_info(vocabulary: seqio.Vocabulary) -> dict[str, Any]:
  """What identifies a vocabulary's ids (not where its file lies)."""
  info = {"kind": type(vocabulary).__name__, "size": int(vocabulary.vocab_size)}
  model = getattr(vocabulary, "sentencepiece_model_file", None)
  if model:
    info["sha256"] = _file_sha256(model)
  return info


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _describe(value: Any, vocab_keys: Sequence[str]) -> str:
  text = _ADDRESS.sub("", repr(value))
  for key in vocab_keys:  # The vocabulary is checked by content, not path.
    text = text.replace(key, "<vocabulary>")
  return text


def fingerprint(task: seqio.Task, split: str) -> str:
  """A hash of what makes a task's examples: its registration key, source and
  preprocessors (module and name, with their bound arguments)."""
  vocab_keys = sorted({vocab_lib.vocabulary_key(f.vocabulary)
                       for f in task.output_features.values()})
  parts = {
      "task": task.name, "split": split,
      "key": _describe(registry.registration_key(task.name), vocab_keys),
      "source": type(task.source).__name__,
      "preprocessors": [_describe(p, vocab_keys) for p in task.preprocessors],
      "features": {k: [f.add_eos, f.required, f.dtype.name if hasattr(
          f.dtype, "name") else str(f.dtype)]
                   for k, f in sorted(task.output_features.items())},
  }
  text = json.dumps(parts, sort_keys=True)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def expected_settings(task: seqio.Task, split: str,
                      sequence_lengths: Mapping[str, int]) -> dict[str, Any]:
  """The settings a cache of ``task``/``split`` at these lengths must have."""
  return {
      "format_version": FORMAT_VERSION,
      "task": task.name,
      "split": split,
      "vocabulary": vocabulary_info(task.output_features[F.TARGETS].vocabulary),
      "sequence_lengths": {k: int(sequence_lengths[k])
                           for k in F.TOKEN_FEATURES},
      "fingerprint": fingerprint(task, split),
  }


def check_settings(found: Mapping[str, Any], expected: Mapping[str, Any],
                   directory: str) -> None:
  """Raises ``CacheMismatchError`` naming the directory and the first field
  whose value differs."""
  for field in ("format_version", "task", "split", "vocabulary",
                "sequence_lengths", "fingerprint"):
    if found.get(field) != expected[field]:
      hint = {
          "vocabulary": "it was built with another vocabulary",
          "sequence_lengths": "it was built for other sequence lengths",
          "fingerprint": "the task's source or preprocessing changed since",
      }.get(field, "it holds something else")
      raise CacheMismatchError(
          f"Cache {directory} does not match task {expected['task']!r} split "
          f"{expected['split']!r}: field {field!r} is {found.get(field)!r}, the "
          f"task has {expected[field]!r} ({hint}). Rebuild it with `hyper-tasks "
          f"cache` into another directory, or remove it.")


def is_one_to_one(task: seqio.Task) -> bool:
  """Whether every source example gives exactly one record (text-level
  generation tasks: no preprocessor but the tokenizer)."""
  return (registry.is_text_level(task.name)
          and registry.evaluation_mode(task.name) == registry.GENERATION
          and len(task.preprocessors) == 1
          and task_datasets.is_tokenizer(task.preprocessors[0]))


def interleaved_counts(total: int, num_shards: int) -> list[int]:
  """Records of each shard when shard ``k`` holds examples ``k, k + n, ...``."""
  return [len(range(k, total, num_shards)) for k in range(num_shards)]


class CachedSplit:
  """One complete, checked split of a cached task, read record by record.

  Attributes:
    directory: the task's cache directory.
    split: the split.
    info: the parsed ``info.<split>.json``.
    num_examples: records in the split.
    features: seqio's feature descriptions (``{"shape", "dtype"}`` by name).
  """

  def __init__(self, directory: str, split: str,
               expected: Optional[Mapping[str, Any]] = None):
    self.directory, self.split = directory, split
    if not os.path.exists(os.path.join(directory, COMPLETED)):
      raise CacheError(
          f"Cache {directory} is incomplete (no {COMPLETED} file): a build was "
          "interrupted or is still running. Run `hyper-tasks cache` again to "
          "finish it.")
    info_path = seqio.utils.get_cached_info_path(directory, split)
    self.info = read_json(info_path)
    ours = self.info.get("hyper_tasks")
    if not isinstance(ours, dict):
      raise CacheError(f"{info_path} has no 'hyper_tasks' entry: not a cache "
                       "written by `hyper-tasks cache`.")
    if expected is not None:
      check_settings(ours, expected, directory)
    self.features = self.info.get("features") or {}
    counts = ours.get("shard_records")
    num_shards = self.info.get("num_shards")
    if not isinstance(counts, list) or num_shards != len(counts):
      raise CacheError(
          f"{info_path}: field 'num_shards' is {num_shards!r} but "
          f"'hyper_tasks.shard_records' lists {counts!r}; the info file does "
          "not match the shards.")
    self.num_shards = num_shards
    self.counts = [int(c) for c in counts]
    self.num_examples = sum(self.counts)
    stats = read_json(seqio.utils.get_cached_stats_path(directory, split))
    if stats.get("examples") != self.num_examples:
      raise CacheError(
          f"{seqio.utils.get_cached_stats_path(directory, split)}: field "
          f"'examples' is {stats.get('examples')!r}, the shards hold "
          f"{self.num_examples}.")
    self.order = ours.get("order")
    if (self.order == INTERLEAVED and
        self.counts != interleaved_counts(self.num_examples, num_shards)):
      raise CacheError(f"{info_path}: shard_records {self.counts} are not an "
                       "interleaved split of the examples.")
    self._offsets = [self._load_offsets(k) for k in range(num_shards)]
    self._files: list[Optional[mmap.mmap]] = [None] * num_shards
    self._starts = np.cumsum([0] + self.counts)

  def _load_offsets(self, k: int) -> np.ndarray:
    path = shard_path(self.directory, self.split, k, self.num_shards)
    if not os.path.exists(path):
      raise CacheError(f"Cache shard {path} is missing ({self.num_shards} shards "
                       f"listed in info.{self.split}.json).")
    offsets_file = marker_path(self.directory, self.split, k, self.num_shards,
                               "offsets.npy")
    try:
      offsets = np.load(offsets_file, mmap_mode="r")
    except (OSError, ValueError) as e:
      raise CacheError(f"Cache offsets {offsets_file} cannot be read: {e}") from None
    size = os.path.getsize(path)
    if len(offsets) != self.counts[k] + 1 or int(offsets[-1]) != size:
      raise CacheError(
          f"Cache shard {path} does not match its offsets: {size} bytes and "
          f"{len(offsets) - 1} records indexed, expected {self.counts[k]} records"
          f" ending at byte {int(offsets[-1]) if len(offsets) else 0} (truncated "
          "or rewritten?).")
    return offsets

  def _file(self, k: int) -> mmap.mmap:
    if self._files[k] is None:
      path = shard_path(self.directory, self.split, k, self.num_shards)
      with open(path, "rb") as f:
        size = os.path.getsize(path)
        self._files[k] = (mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                          if size else b"")
    return self._files[k]

  def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard, record) of examples at ``indices`` of the task's order."""
    indices = np.asarray(indices, np.int64)
    if self.order == INTERLEAVED:
      return indices % self.num_shards, indices // self.num_shards
    shard = np.searchsorted(self._starts, indices, side="right") - 1
    return shard, indices - self._starts[shard]

  def records(self, indices: Sequence[int]) -> list[bytes]:
    """The serialized ``tf.train.Example`` of each example index."""
    shards, recs = self.locate(indices)
    out = []
    for k, r in zip(shards.tolist(), recs.tolist()):
      offsets = self._offsets[k]
      out.append(self._file(k)[int(offsets[r]) + RECORD_HEAD:
                               int(offsets[r + 1]) - RECORD_TAIL])
    return out


def find(task: seqio.Task, split: str, sequence_lengths: Mapping[str, int],
         cache_dirs: Sequence[str]) -> Optional[CachedSplit]:
  """The cache of ``task``/``split`` in the first of ``cache_dirs`` holding one.

  Returns None (and logs it) when no directory has a cache of the task; raises
  ``CacheError`` / ``CacheMismatchError`` when the one found is incomplete,
  damaged or built with other settings.
  """
  for root in cache_dirs:
    directory = task_dir(root, task.name)
    if os.path.exists(settings_path(directory, split)) or os.path.exists(
        seqio.utils.get_cached_info_path(directory, split)):
      expected = expected_settings(task, split, sequence_lengths)
      if not os.path.exists(os.path.join(directory, COMPLETED)):
        check_settings(read_json(settings_path(directory, split)), expected,
                       directory)
      return CachedSplit(directory, split, expected)
  logging.info("data cache: task %s split %s is NOT cached in %s.", task.name,
               split, list(cache_dirs))
  return None
