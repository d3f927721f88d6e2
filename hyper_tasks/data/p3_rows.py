"""P3 / T0: the Hugging Face datasets of T0 and reading their rows.

Rows are read from ``<data_dir>/<dataset>/<subset>/<split>.jsonl``
(Hugging Face schema; ``<split>.hf_format.jsonl`` is preferred when both exist),
or with the ``datasets`` package when it is installed and the caller allows it.
``RowReader`` reads a dataset's rows in file order or by index, never holding a
split in memory: local jsonl is streamed line by line and read by byte offset
(``_line_offsets``, 4-8 bytes per row); a ``datasets`` split stays the library's
memory-mapped Arrow table, read row by row (``ds[i]``), never turned into a list. ``T0_TRAIN_DATASETS`` and
``T0_EVAL_DATASETS`` are T0's training and held-out datasets.
"""
from __future__ import annotations

import array
import dataclasses
import functools
import json
import os
import re
from typing import Iterator, Optional, Sequence

import numpy as np


def task_clean(text: str) -> str:
  """A template or dataset name as a seqio-safe name fragment (as T0 does)."""
  return re.sub(r"[^\w\d\._]+", "_", text).strip("_")


@dataclasses.dataclass(frozen=True)
class P3Dataset:
  """A Hugging Face dataset (subset) and its splits.

  Attributes:
    name: Hugging Face dataset name (also the templates folder).
    subset: configuration name, or None.
    splits: seqio split -> Hugging Face split (ANLI rounds use e.g. dev_r1).
    key: name used in task names; defaults to ``<name>_<subset>``.
    aliases: other folder names for the subset's local data (``wsc`` for
      ``wsc.fixed``).
  """
  name: str
  subset: Optional[str] = None
  splits: tuple[tuple[str, str], ...] = (("train", "train"),
                                         ("validation", "validation"))
  key: str = ""
  aliases: tuple[str, ...] = ()

  @property
  def task_key(self) -> str:
    return task_clean(self.key or "_".join(filter(None, [self.name,
                                                         self.subset])))

  def hf_split(self, split: str) -> str:
    return dict(self.splits)[split]


def _ds(name, subset=None, **kwargs):
  return P3Dataset(name, subset, **kwargs)


# T0's training datasets (Sanh et al. 2022, D4 "train" set).
T0_TRAIN_DATASETS = tuple(_ds(*x.split("/")) for x in (
    "commonsense_qa", "dream", "quail", "quartz", "social_i_qa", "wiqa",
    "cosmos_qa", "qasc", "quarel", "sciq", "wiki_hop/original",
    "adversarial_qa/dbidaf", "adversarial_qa/dbert", "adversarial_qa/droberta",
    "quoref", "duorc/SelfRC", "duorc/ParaphraseRC", "ropes",
    "kilt_tasks/hotpotqa", "wiki_qa", "common_gen", "wiki_bio",
    "amazon_polarity", "app_reviews", "imdb", "rotten_tomatoes",
    "yelp_review_full", "cnn_dailymail/3.0.0", "gigaword", "multi_news",
    "samsum", "xsum", "ag_news", "dbpedia_14", "trec", "glue/mrpc",
    "paws/labeled_final", "glue/qqp"))

# T0's held-out evaluation datasets, evaluated on validation data.
T0_EVAL_DATASETS = (
    _ds("anli", splits=(("train", "train_r1"), ("validation", "dev_r1")),
        key="anli_r1"),
    _ds("anli", splits=(("train", "train_r2"), ("validation", "dev_r2")),
        key="anli_r2"),
    _ds("anli", splits=(("train", "train_r3"), ("validation", "dev_r3")),
        key="anli_r3"),
    _ds("super_glue", "cb"),
    _ds("super_glue", "copa"),
    _ds("super_glue", "rte"),
    _ds("super_glue", "wic"),
    _ds("super_glue", "wsc.fixed", aliases=("wsc",)),
    _ds("hellaswag"),
    _ds("story_cloze", "2016", splits=(("validation", "validation"),)),
    _ds("winogrande", "winogrande_xl"),
)


def find_data_file(data_dir: str, dataset: P3Dataset,
                   hf_split: str) -> Optional[str]:
  """The local jsonl of a split, or None."""
  subsets = [dataset.subset, *dataset.aliases] if dataset.subset else [None]
  for subset in subsets:
    folder = os.path.join(data_dir, dataset.name, *([subset] if subset else []))
    for filename in (f"{hf_split}.hf_format.jsonl", f"{hf_split}.jsonl"):
      path = os.path.join(folder, filename)
      if os.path.exists(path):
        return path
  return None


def iter_jsonl(path: str, shard_index: int = 0,
               num_shards: int = 1) -> Iterator[tuple[int, dict]]:
  """(row index, row) of a jsonl file, every num_shards-th row."""
  with open(path, encoding="utf-8") as f:
    index = 0
    for line in f:
      if not line.strip():
        continue
      if index % num_shards == shard_index:
        yield index, json.loads(line)
      index += 1


@functools.lru_cache(maxsize=None)
def count_rows(path: str) -> int:
  with open(path, encoding="utf-8") as f:
    return sum(1 for line in f if line.strip())


def hf_rows(dataset: P3Dataset, hf_split: str):
  """The split from the ``datasets`` package (a memory-mapped Arrow
  ``datasets.Dataset``: ``len``, ``ds[i]``; nothing is read into memory here),
  or None when the package is not installed."""
  try:
    import datasets  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return datasets.load_dataset(dataset.name, dataset.subset, split=hf_split)


@dataclasses.dataclass(frozen=True)
class RowReader:
  """Reads a P3Dataset's rows from local jsonl, or ``datasets`` if allowed."""
  dataset: P3Dataset
  data_dir: Optional[str]
  use_hf_datasets: bool = False

  def _path(self, split: str) -> Optional[str]:
    if not self.data_dir:
      return None
    return find_data_file(self.data_dir, self.dataset,
                             self.dataset.hf_split(split))

  def available_splits(self) -> tuple[str, ...]:
    return tuple(s for s, _ in self.dataset.splits
                 if self._path(s) or self.use_hf_datasets)

  def rows(self, split: str, shard_index: int = 0,
           num_shards: int = 1) -> Iterator[tuple[int, dict]]:
    """(row index, row) in file order, every ``num_shards``-th row."""
    path = self._path(split)
    if path:
      yield from iter_jsonl(path, shard_index, num_shards)
      return
    rows = self._hf_rows(split)
    for index in range(shard_index, len(rows), num_shards):
      yield index, dict(rows[index])  # One row at a time.

  def _hf_rows(self, split: str):
    rows = _hf_rows_cached(self.dataset, self.dataset.hf_split(split))
    if rows is None:
      raise FileNotFoundError(
          f"No local data for {self.dataset.task_key}/{split} under "
          f"{self.data_dir!r} and the `datasets` package is not installed.")
    return rows

  def rows_at(self, split: str, indices: Sequence[int]) -> list[dict]:
    """The rows with these indices (``rows``' numbering), in the given order."""
    path = self._path(split)
    if path:
      offsets = _line_offsets(path)
      out = []
      with open(path, "rb") as f:
        for index in indices:
          f.seek(int(offsets[index]))
          # The line up to the first universal newline, as text mode reads it.
          line = f.readline().splitlines()[0]
          out.append(json.loads(line.decode("utf-8")))
      return out
    rows = self._hf_rows(split)
    return [dict(rows[int(i)]) for i in indices]

  def num_rows(self, split: str, strict: bool = False) -> int:
    """Rows of ``split``; 0 without data unless ``strict`` (then it raises)."""
    path = self._path(split)
    if path:
      return len(_line_offsets(path))
    if strict:
      return len(self._hf_rows(split))
    rows = _hf_rows_cached(self.dataset, self.dataset.hf_split(split))
    return len(rows or ())


@functools.lru_cache(maxsize=None)
def _line_offsets(path: str) -> np.ndarray:
  """Byte offset of each row of a jsonl file, numbered as ``iter_jsonl``.

  Rows are the non-blank lines of the file read in text mode (universal
  newlines: ``\\n``, ``\\r\\n`` and a lone ``\\r`` end a line). One pass over
  the file, shared by the templates of a dataset; it also counts the rows.
  """
  offsets = array.array("q")
  position = 0
  with open(path, "rb") as f:
    for raw in f:
      # A lone \r splits a line in text mode; bytes.splitlines splits there too.
      pieces = raw.splitlines(keepends=True) if b"\r" in raw else (raw,)
      for piece in pieces:
        stripped = piece.strip()
        # str.strip also drops non-ASCII whitespace: decode the rare line whose
        # first non-space byte is not JSON's opening brace.
        if stripped and (stripped[:1] in (b"{", b"[") or
                         piece.decode("utf-8").strip()):
          offsets.append(position)
        position += len(piece)
  offsets = np.frombuffer(offsets, dtype=np.int64)
  return offsets.astype(np.uint32) if position < 2 ** 32 else offsets.copy()


@functools.lru_cache(maxsize=16)
def _hf_rows_cached(dataset: P3Dataset, hf_split: str):
  return hf_rows(dataset, hf_split)
