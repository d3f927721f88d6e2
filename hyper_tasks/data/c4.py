"""C4 for hypernetwork pretraining: documents cut into hyper_inputs/inputs/targets.

HINT pretrains the hypernetwork with a prefix-LM objective: the hypernetwork reads
the start of a document, the encoder reads what follows, the decoder predicts the
rest, so the hypernetwork must encode something the backbone can use.

Cutting (token level, after tokenization; ``split_document``)::

  document tokens (n) -> k = ceil(n / M) chunks of balanced size (M = content
  capacity of one example) -> each chunk cut at two random points:

    3 parts:  [ hyper_inputs | inputs | targets ]
    4 parts:  [ a | inputs | targets | d ],  hyper_inputs = a + EOS + d

Properties (tested): the parts of all chunks concatenate back to the whole
document (no token dropped or repeated, documents shorter than 3 or 4 tokens
excepted); every part is non-empty and fits its length with its EOS
(``len <= L - 1``); the cut points depend only on the document text, the chunk
index and ``seed``, so they are the same on every run, host and epoch, whatever
the shuffling. Lengths come from the ``sequence_length`` seqio passes to
preprocessors (``DEFAULT_SEQUENCE_LENGTHS`` when there is none).

Sources: TFDS ``c4/en`` (``c4_path="tfds"`` or ``"tfds:c4/en:3.1.0"``) or local
files (a file, directory or glob): ``.jsonl``/``.json`` (``text`` field, optionally
``.gz``) or ``.txt`` (one document per line). Local files have no validation split,
so about 1% of documents (by a hash of their text) form ``validation`` and the rest
``train``.

Names: ``c4_hyper_pretrain``, ``c4_hyper_pretrain_4part``; the embedded corpus
(embedded/pretrain/corpus.txt) as ``embedded_pretrain``,
``embedded_pretrain_4part``.
"""
from __future__ import annotations

import functools
import glob
import gzip
import json
import os
from typing import Iterator, Mapping, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from hyper_tasks.data import features as F
from hyper_tasks.data import preprocessors as P
from hyper_tasks.data import registry
from hyper_tasks.data import sources
from hyper_tasks.data import vocab as vocab_lib

TFDS_C4 = "c4/en:3.1.0"
DEFAULT_SEQUENCE_LENGTHS = {F.HYPER_INPUTS: 512, F.INPUTS: 256, F.TARGETS: 128}
EMBEDDED_CORPUS = os.path.join(os.path.dirname(__file__), "embedded",
                               "pretrain", "corpus.txt")
_DOC_HASH = "doc_hash"
_VALIDATION_BUCKETS = 100  # 1 in 100 local documents is validation.
_SHUFFLE_DOCS = 10_000


def _capacities(lengths: Mapping[str, int], num_parts: int) -> tuple[int, int,
                                                                      int]:
  """Content tokens per part: each length minus its EOS (minus a separator)."""
  lh = lengths[F.HYPER_INPUTS] - 1 - (1 if num_parts == 4 else 0)
  li = lengths[F.INPUTS] - 1
  lt = lengths[F.TARGETS] - 1
  if min(lh, li, lt) < num_parts - 2 or lh + li + lt < 8:
    raise ValueError(f"Sequence lengths {dict(lengths)} are too short to cut "
                     f"documents into {num_parts} parts.")
  return lh, li, lt


def _uniform_int(u: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor) -> tf.Tensor:
  """Maps u in [0, 1) to an integer in [lo, hi] (inclusive)."""
  span = tf.cast(hi - lo + 1, tf.float32)
  return tf.minimum(lo + tf.cast(tf.floor(u * span), lo.dtype), hi)


def split_document(tokens: tf.Tensor, seed: tf.Tensor,
                   lengths: Mapping[str, int], num_parts: int = 3,
                   eos_id: int = vocab_lib.EOS_ID) -> dict[str, tf.RaggedTensor]:
  """Cuts one tokenized document into examples (see the module docstring).

  Args:
    tokens: ``[n]`` int32 document tokens (no EOS), ``n >= num_parts``.
    seed: ``[2]`` int64 stateless seed (document hash, user seed).
    lengths: ``{"hyper_inputs": Lh, "inputs": Li, "targets": Lt}``.
    num_parts: 3 or 4.
    eos_id: EOS appended to every part (and separating a and d).

  Returns:
    ``{"hyper_inputs", "inputs", "targets"}`` ragged ``[k, None]`` with EOS, and
    ``"chunk"`` ``[k]`` int64.
  """
  lh, li, lt = (tf.constant(c, tf.int64)
                for c in _capacities(lengths, num_parts))
  n = tf.size(tokens, out_type=tf.int64)
  capacity = lh + li + lt
  k = (n + capacity - 1) // capacity
  chunk = tf.range(k, dtype=tf.int64)
  starts = chunk * n // k
  sizes = (chunk + 1) * n // k - starts
  u = tf.random.stateless_uniform([k, 3], seed=seed)
  rest = num_parts - 1  # Parts after inputs that need at least one token.
  one = tf.constant(1, tf.int64)
  len_i = _uniform_int(u[:, 0], tf.maximum(one, sizes - lh - lt),
                       tf.minimum(li, sizes - rest))
  len_t = _uniform_int(u[:, 1], tf.maximum(one, sizes - len_i - lh),
                       tf.minimum(lt, sizes - len_i - (rest - 1)))
  len_h = sizes - len_i - len_t  # In [1, lh] (3 parts) or [2, lh] (4 parts).
  eos = tf.fill([k, 1], tf.cast(eos_id, tokens.dtype))
  if num_parts == 3:
    bounds = [starts, starts + len_h, starts + len_h + len_i]
  else:
    len_a = _uniform_int(u[:, 2], tf.ones_like(len_h), len_h - 1)
    bounds = [starts, starts + len_a, starts + len_a + len_i,
              starts + len_a + len_i + len_t]
  row_splits = tf.concat([tf.reshape(tf.stack(bounds, axis=1), [-1]), [n]], 0)
  # Row p of chunk j is part p: [k * num_parts, None].
  rows = tf.RaggedTensor.from_row_splits(tokens, row_splits)
  part = lambda p: tf.gather(rows, chunk * num_parts + p)
  if num_parts == 3:
    hyper, inputs, targets = part(0), part(1), part(2)
  else:
    hyper = tf.concat([part(0), eos, part(3)], axis=1)
    inputs, targets = part(1), part(2)
  return {
      F.HYPER_INPUTS: tf.concat([hyper, eos], axis=1),
      F.INPUTS: tf.concat([inputs, eos], axis=1),
      F.TARGETS: tf.concat([targets, eos], axis=1),
      "chunk": chunk,
  }


def prepare_documents(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """``{"text"}`` -> ``{"targets": text, "doc_hash"}`` (tokenized next)."""
  return dataset.map(
      lambda ex: {
          F.TARGETS: ex["text"],
          _DOC_HASH: tf.strings.to_hash_bucket_fast(ex["text"], 2**62),
      }, num_parallel_calls=tf.data.AUTOTUNE)


def split_documents(dataset: tf.data.Dataset,
                    output_features: Mapping[str, seqio.Feature],
                    sequence_length: Optional[Mapping[str, int]] = None,
                    num_parts: int = 3,
                    seed: int = 0,
                    task_name: str = "c4") -> tf.data.Dataset:
  """seqio preprocessor: tokenized documents -> cut examples with metadata."""
  lengths = dict(DEFAULT_SEQUENCE_LENGTHS)
  lengths.update({k: v for k, v in (sequence_length or {}).items()
                  if k in F.TOKEN_FEATURES and v})
  _capacities(lengths, num_parts)  # Fail at graph construction, not in tf.data.
  eos_id = output_features[F.TARGETS].vocabulary.eos_id

  def cut(ex):
    parts = split_document(
        ex[F.TARGETS], tf.stack([ex[_DOC_HASH], tf.constant(seed, tf.int64)]),
        lengths, num_parts, eos_id)
    k = tf.shape(parts["chunk"])[0]
    ids = tf.strings.join([tf.strings.as_string(ex[_DOC_HASH]), "-",
                           tf.strings.as_string(parts["chunk"])])
    out = {key: parts[key] for key in F.TOKEN_FEATURES}
    out.update({
        F.TASK_NAMES: tf.fill([k], task_name),
        F.REFERENCES: tf.fill([k], "[]"),
        F.CATEGORY: tf.fill([k], ""),
        F.TEMPLATE: tf.fill([k], ""),
        F.EXAMPLE_ID: ids,
        F.CHOICE_INDEX: tf.zeros([k], tf.int32),
        F.IS_CORRECT: tf.ones([k], tf.int32),
        F.NUM_CHOICES: tf.ones([k], tf.int32),
    })
    return out

  ds = dataset.filter(lambda ex: tf.size(ex[F.TARGETS]) >= num_parts)
  ds = ds.map(cut, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
  return ds.map(
      lambda ex: {k: (v.to_tensor() if isinstance(v, tf.RaggedTensor) else v)
                  for k, v in ex.items()},
      num_parallel_calls=tf.data.AUTOTUNE)


# --------------------------------------------------------------------- sources


def resolve_files(path: str) -> list[str]:
  """A file, a directory (its .jsonl/.json/.txt files, optionally .gz) or a glob."""
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    files = [os.path.join(path, f) for f in os.listdir(path)]
  else:
    files = glob.glob(path)
  exts = (".jsonl", ".json", ".txt")
  files = sorted(f for f in files if f.removesuffix(".gz").endswith(exts))
  if not files:
    raise FileNotFoundError(f"No .jsonl/.json/.txt documents at {path!r}.")
  return files


def _is_json(path: str) -> bool:
  return path.removesuffix(".gz").endswith((".jsonl", ".json"))


def iter_documents(files: Sequence[str], shard_index: int = 0,
                   num_shards: int = 1) -> Iterator[str]:
  """Document texts of local files, in order (every num_shards-th of them)."""
  i = 0
  for path in files:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
      for line in f:
        line = line.rstrip("\n")
        if not line.strip():
          continue
        if i % num_shards == shard_index:
          yield json.loads(line)["text"] if _is_json(path) else line
        i += 1


def _local_documents_fn(files: tuple[str, ...]):
  """A RecordsSource function over local document files."""

  def dataset_fn(split, shuffle_files, seed=None, shard_info=None):
    index = shard_info.index if shard_info else 0
    num = shard_info.num_shards if shard_info else 1
    if not any(_is_json(f) for f in files):
      # Plain text: TF reads lines itself, no Python in the loop.
      ds = tf.data.TextLineDataset(list(files))
      ds = ds.filter(lambda s: tf.strings.length(tf.strings.strip(s)) > 0)
      ds = ds.shard(num, index) if num > 1 else ds
    else:
      ds = tf.data.Dataset.from_generator(
          functools.partial(iter_documents, files, index, num),
          output_signature=tf.TensorSpec([], tf.string))
    bucket = lambda s: tf.strings.to_hash_bucket_fast(s, _VALIDATION_BUCKETS)
    if split == "validation":
      ds = ds.filter(lambda s: tf.equal(bucket(s), 0))
    else:
      ds = ds.filter(lambda s: tf.not_equal(bucket(s), 0))
    if shuffle_files:
      ds = ds.shuffle(_SHUFFLE_DOCS, seed=seed, reshuffle_each_iteration=True)
    return ds.map(lambda s: {"text": s})

  return dataset_fn


def _source(c4_path: str, tfds_data_dir: Optional[str]) -> seqio.DataSource:
  if c4_path == "tfds" or c4_path.startswith("tfds:"):
    name = c4_path.partition(":")[2] or TFDS_C4
    return seqio.TfdsDataSource(tfds_name=name, tfds_data_dir=tfds_data_dir,
                                splits=("train", "validation"))
  return sources.RecordsSource(
      _local_documents_fn(tuple(resolve_files(c4_path))),
      splits=("train", "validation"))


def _task_kwargs(source: seqio.DataSource, vocabulary: seqio.Vocabulary,
                 num_parts: int, seed: int, task_name: str,
                 shuffle_buffer_size: int) -> dict:
  return dict(
      source=source,
      preprocessors=[
          prepare_documents,
          functools.partial(P.tokenize_batched, with_eos=False),
          functools.partial(split_documents, num_parts=num_parts, seed=seed,
                            task_name=task_name),
      ],
      output_features=F.output_features(vocabulary),
      # Chunks of one document arrive together; mix them with other documents'.
      shuffle_buffer_size=shuffle_buffer_size,
  )


def _register(prefix: str, c4_path: str, vocabulary, seed: int,
              tfds_data_dir: Optional[str],
              shuffle_buffer_size: int) -> list[str]:
  vocabulary = vocab_lib.get_vocabulary(vocabulary)
  source = _source(c4_path, tfds_data_dir)
  names = []
  for num_parts, suffix in ((3, ""), (4, "_4part")):
    name = prefix + suffix
    key = ("c4", c4_path, tfds_data_dir, num_parts, seed, shuffle_buffer_size,
           vocab_lib.vocabulary_key(vocabulary))
    registry.add_task(
        name, key,
        functools.partial(_task_kwargs, source, vocabulary, num_parts, seed,
                          name, shuffle_buffer_size),
        text_level=False)
    names.append(name)
  return names


@gin.configurable(module="hyper_tasks.data")
def register_c4(c4_path: str = "tfds",
                vocabulary: vocab_lib.VocabularyLike = vocab_lib.BYTE,
                *,
                seed: int = 0,
                tfds_data_dir: Optional[str] = None,
                shuffle_buffer_size: int = 10_000) -> list[str]:
  """Registers ``c4_hyper_pretrain`` and ``c4_hyper_pretrain_4part``.

  Args:
    c4_path: ``"tfds"``, ``"tfds:<name>"``, or local files (file, dir or glob).
    vocabulary: ``"byte"``, a SentencePiece path, or a seqio vocabulary.
    seed: cut-point seed (cuts are otherwise a function of the document).
    tfds_data_dir: TFDS data directory.
    shuffle_buffer_size: examples shuffled after cutting.

  Returns:
    Registered names.
  """
  return _register("c4_hyper_pretrain", c4_path, vocabulary, seed,
                   tfds_data_dir, shuffle_buffer_size)


def register_embedded_pretrain(
    vocabulary: vocab_lib.VocabularyLike = vocab_lib.BYTE,
    seed: int = 0) -> list[str]:
  """The shipped corpus as ``embedded_pretrain`` / ``embedded_pretrain_4part``."""
  return _register("embedded_pretrain", EMBEDDED_CORPUS, vocabulary, seed,
                   None, 1000)
