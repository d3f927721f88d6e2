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
the shuffling. Cutting is vectorized over batches of documents (``split_batch``). Lengths come from the ``sequence_length`` seqio passes to
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
  span = tf.cast(hi - lo + 1, tf.float64)
  return tf.minimum(lo + tf.cast(tf.floor(u * span), lo.dtype), hi)


def _uniforms(doc_hash: tf.Tensor, chunk: tf.Tensor, seed: tf.Tensor,
              num: int) -> tf.Tensor:
  """``[K, num]`` numbers in [0, 1), a fixed function of (doc, chunk, seed).

  A fingerprint of ``"<doc hash>/<chunk>/<seed>/<j>"`` rather than a stateless
  RNG: it vectorizes over chunks of many documents, each with its own seed, and
  is the same on every platform.
  """
  key = tf.strings.join([tf.strings.as_string(doc_hash),
                         tf.strings.as_string(chunk),
                         tf.strings.as_string(seed)], "/")
  cols = [tf.strings.to_hash_bucket_fast(tf.strings.join([key, str(j)], "/"),
                                         2**52) for j in range(num)]
  return tf.cast(tf.stack(cols, axis=1), tf.float64) / 2.0**52


def split_batch(tokens: tf.RaggedTensor, doc_hash: tf.Tensor, seed: int,
                lengths: Mapping[str, int], num_parts: int = 3,
                eos_id: int = vocab_lib.EOS_ID) -> dict[str, tf.Tensor]:
  """Cuts a batch of tokenized documents into examples (module docstring).

  Vectorized over documents and chunks: a handful of ops per batch rather than
  per document, which made cutting cheaper than tokenizing.

  Args:
    tokens: ``[B, None]`` int32 document tokens (no EOS), every row at least
      ``num_parts`` long.
    doc_hash: ``[B]`` int64 document hashes (with ``seed``, they fix the cuts).
    seed: user seed.
    lengths: ``{"hyper_inputs": Lh, "inputs": Li, "targets": Lt}``.
    num_parts: 3 or 4.
    eos_id: EOS appended to every part (and separating a and d).

  Returns:
    ``{"hyper_inputs", "inputs", "targets"}`` ragged ``[K, None]`` with EOS,
    ``"doc"`` ``[K]`` (row of ``tokens``) and ``"chunk"`` ``[K]`` (index in its
    document), K the total number of chunks, in document order.
  """
  lh, li, lt = (tf.constant(c, tf.int64)
                for c in _capacities(lengths, num_parts))
  n_doc = tokens.row_lengths()  # [B]
  capacity = lh + li + lt
  k_doc = (n_doc + capacity - 1) // capacity  # [B]
  doc = tf.repeat(tf.range(tf.size(n_doc, out_type=tf.int64)), k_doc)  # [K]
  first_chunk = tf.cumsum(k_doc, exclusive=True)
  chunk = tf.range(tf.size(doc, out_type=tf.int64)) - tf.gather(first_chunk,
                                                                doc)
  n, k = tf.gather(n_doc, doc), tf.gather(k_doc, doc)
  starts = chunk * n // k  # Balanced chunks, offsets within the document.
  sizes = (chunk + 1) * n // k - starts
  u = _uniforms(tf.gather(doc_hash, doc), chunk, tf.cast(seed, tf.int64), 3)
  rest = num_parts - 1  # Parts after inputs that need at least one token.
  one = tf.constant(1, tf.int64)
  len_i = _uniform_int(u[:, 0], tf.maximum(one, sizes - lh - lt),
                       tf.minimum(li, sizes - rest))
  len_t = _uniform_int(u[:, 1], tf.maximum(one, sizes - len_i - lh),
                       tf.minimum(lt, sizes - len_i - (rest - 1)))
  len_h = sizes - len_i - len_t  # In [1, lh] (3 parts) or [2, lh] (4 parts).
  offsets = tf.gather(tokens.row_splits, doc) + starts  # In tokens.values.
  if num_parts == 3:
    bounds = [offsets, offsets + len_h, offsets + len_h + len_i]
  else:
    len_a = _uniform_int(u[:, 2], tf.ones_like(len_h), len_h - 1)
    bounds = [offsets, offsets + len_a, offsets + len_a + len_i,
              offsets + len_a + len_i + len_t]
  # Chunks tile the documents, which tile tokens.values: the bounds, in order,
  # are the row splits of all parts, part p of chunk c in row c * num_parts + p.
  total = tf.size(tokens.values, out_type=tf.int64)
  row_splits = tf.concat([tf.reshape(tf.stack(bounds, axis=1), [-1]),
                          [total]], 0)
  rows = tf.RaggedTensor.from_row_splits(tokens.values, row_splits,
                                         validate=False)
  num_chunks = tf.size(chunk, out_type=tf.int64)
  part = lambda p: tf.gather(rows, tf.range(num_chunks) * num_parts + p)
  eos = tf.fill([num_chunks, 1], tf.cast(eos_id, tokens.dtype))
  if num_parts == 3:
    hyper, inputs, targets = part(0), part(1), part(2)
  else:
    hyper = tf.concat([part(0), eos, part(3)], axis=1)
    inputs, targets = part(1), part(2)
  return {
      F.HYPER_INPUTS: P.append_eos_ragged(hyper, eos_id),
      F.INPUTS: P.append_eos_ragged(inputs, eos_id),
      F.TARGETS: P.append_eos_ragged(targets, eos_id),
      "doc": doc,
      "chunk": chunk,
  }


def split_document(tokens: tf.Tensor, seed: tf.Tensor,
                   lengths: Mapping[str, int], num_parts: int = 3,
                   eos_id: int = vocab_lib.EOS_ID) -> dict[str, tf.RaggedTensor]:
  """Cuts one tokenized document (``split_batch`` of a batch of one).

  Args:
    tokens: ``[n]`` int32 document tokens (no EOS), ``n >= num_parts``.
    seed: ``[2]`` int64: (document hash, user seed).
    lengths: ``{"hyper_inputs": Lh, "inputs": Li, "targets": Lt}``.
    num_parts: 3 or 4.
    eos_id: EOS appended to every part (and separating a and d).

  Returns:
    ``{"hyper_inputs", "inputs", "targets"}`` ragged ``[k, None]`` with EOS, and
    ``"chunk"`` ``[k]`` int64.
  """
  seed = tf.convert_to_tensor(seed, tf.int64)
  parts = split_batch(tf.RaggedTensor.from_tensor(tokens[None]), seed[:1],
                      seed[1], lengths, num_parts, eos_id)
  del parts["doc"]
  return parts


def tokenize_and_split(dataset: tf.data.Dataset,
                       output_features: Mapping[str, seqio.Feature],
                       sequence_length: Optional[Mapping[str, int]] = None,
                       num_parts: int = 3,
                       seed: int = 0,
                       task_name: str = "c4",
                       batch_size: int = 64) -> tf.data.Dataset:
  """seqio preprocessor: ``{"text"}`` documents -> tokenized, cut examples.

  Documents are tokenized and cut a batch at a time (one SentencePiece call and
  one cutting graph per ``batch_size`` documents); documents shorter than
  ``num_parts`` tokens are dropped. Lengths come from seqio's
  ``sequence_length`` (``DEFAULT_SEQUENCE_LENGTHS`` for missing keys).
  """
  lengths = dict(DEFAULT_SEQUENCE_LENGTHS)
  lengths.update({k: v for k, v in (sequence_length or {}).items()
                  if k in F.TOKEN_FEATURES and v})
  _capacities(lengths, num_parts)  # Fail at graph construction, not in tf.data.
  vocabulary = output_features[F.TARGETS].vocabulary

  @tf.autograph.experimental.do_not_convert
  def cut(batch):
    texts = batch["text"]
    tokens = P.encode_batch_tf(vocabulary, texts)
    keep = tokens.row_lengths() >= num_parts
    tokens = tf.ragged.boolean_mask(tokens, keep)
    doc_hash = tf.boolean_mask(
        tf.strings.to_hash_bucket_fast(texts, 2**62), keep)
    parts = split_batch(tokens, doc_hash, seed, lengths, num_parts,
                        vocabulary.eos_id)
    k = tf.shape(parts["chunk"])[0]
    ids = tf.strings.join([tf.strings.as_string(tf.gather(doc_hash,
                                                          parts["doc"])),
                           "-", tf.strings.as_string(parts["chunk"])])
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

  ds = dataset.map(lambda ex: {"text": ex["text"]}).batch(batch_size)
  # Unbatched ragged rows arrive in later maps as plain 1-D tensors.
  return ds.map(cut, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


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


def _document_blocks(files: Sequence[str], shard_index: int, num_shards: int,
                     block: int = 256) -> Iterator[list[str]]:
  """``iter_documents`` in lists of ``block`` texts."""
  texts = []
  for text in iter_documents(files, shard_index, num_shards):
    texts.append(text)
    if len(texts) == block:
      yield texts
      texts = []
  if texts:
    yield texts


def _local_documents_fn(files: tuple[str, ...]):
  """A RecordsSource function over local document files."""

  def dataset_fn(split, shuffle_files, seed=None, shard_info=None):
    index = shard_info.index if shard_info else 0
    num = shard_info.num_shards if shard_info else 1
    keep_validation = split == "validation"

    @tf.autograph.experimental.do_not_convert
    def in_split(texts):  # [B] -> the texts of this split, by a text hash.
      bucket = tf.strings.to_hash_bucket_fast(texts, _VALIDATION_BUCKETS)
      return tf.boolean_mask(texts, tf.equal(bucket, 0) == keep_validation)

    if not any(_is_json(f) for f in files):
      # Plain text: TF reads lines itself, no Python in the loop.
      ds = tf.data.TextLineDataset(list(files))
      ds = ds.filter(lambda s: tf.strings.length(tf.strings.strip(s)) > 0)
      ds = ds.shard(num, index) if num > 1 else ds
      ds = ds.batch(256)
    else:
      # Blocks of documents: from_generator costs a Python call per element.
      ds = tf.data.Dataset.from_generator(
          functools.partial(_document_blocks, files, index, num),
          output_signature=tf.TensorSpec([None], tf.string))
    ds = ds.map(lambda texts: {"text": in_split(texts)}).unbatch()
    if shuffle_files:
      ds = ds.shuffle(_SHUFFLE_DOCS, seed=seed, reshuffle_each_iteration=True)
    return ds

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
          functools.partial(tokenize_and_split, num_parts=num_parts,
                            seed=seed, task_name=task_name),
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
        text_level=False, evaluation_mode=registry.GENERATION)
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
