"""Vocabularies: the T5 SentencePiece model and a byte-level vocabulary.

Two vocabularies cover the project:

* The T5 SentencePiece model (``spiece.model``, 32,000 pieces) with the 100 T5
  sentinels appended (``extra_ids=100``), so ids match the Hugging Face T5
  tokenizer: pad 0, EOS 1, UNK 2, ``<extra_id_0>`` = 32099. The model file may be
  local or on ``gs://``; a directory holding ``spiece.model`` is accepted too.
* seqio's ``ByteVocabulary`` (pad 0, EOS 1, UNK 2, byte ``b`` -> ``b + 3``; 259 ids)
  for the embedded default: it needs no file, so the CPU demo runs offline.

``get_vocabulary`` maps a name or path to one of them. Instances are cached by path,
so every task registered with the same vocabulary shares one object (seqio mixtures
compare vocabularies, and the TF SentencePiece op is built once).

Real runs bind ``VOCABULARY = 'auto'`` (every ``gin/runs/*.gin``): :func:`resolve`
then takes the SentencePiece model from the first checkpoint directory that has one
(``MODEL_DIR`` when resuming or evaluating, else the checkpoint being restored: an
HF T5 directory's ``spiece.model`` or ``tokenizer.json``, or the copy a run writes into its ``MODEL_DIR``
with :func:`save_to_model_dir`), else from ``$HYPER_TASKS_VOCABULARY``, and fails
naming where it looked. ``gin/tiny.gin`` binds ``'byte'``. :func:`check_fits`
refuses data whose vocabulary does not fit the model's embedding (larger than it,
or far smaller: a byte vocabulary with a SentencePiece-sized model).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from typing import Optional, Union

import seqio

BYTE = "byte"
AUTO = "auto"
VOCABULARY_ENV = "HYPER_TASKS_VOCABULARY"
SPIECE = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"
RECORD = "vocabulary.json"  # what a MODEL_DIR was trained with
T5_EXTRA_IDS = 100
PAD_ID = 0
EOS_ID = 1
DECODER_START_ID = 0

VocabularyLike = Union[str, seqio.Vocabulary]


@functools.lru_cache(maxsize=None)
def byte_vocabulary() -> seqio.ByteVocabulary:
  """The byte-level vocabulary of the embedded default (259 ids, no sentinels)."""
  return seqio.ByteVocabulary()


@functools.lru_cache(maxsize=None)
def _sentencepiece(path: str, extra_ids: int) -> seqio.SentencePieceVocabulary:
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def sentencepiece_vocabulary(
    path: str, extra_ids: int = T5_EXTRA_IDS) -> seqio.SentencePieceVocabulary:
  """A SentencePiece vocabulary from a local or ``gs://`` model file.

  Args:
    path: the ``.model`` file, or a local directory that holds ``spiece.model``.
    extra_ids: sentinel ids appended after the pieces (100 for T5).

  Raises:
    FileNotFoundError: a local path that does not exist.
  """
  if not path.startswith("gs://"):
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
      path = os.path.join(path, "spiece.model")
    if not os.path.exists(path):
      raise FileNotFoundError(f"SentencePiece model not found: {path}")
  return _sentencepiece(path, extra_ids)


def get_vocabulary(name_or_path: VocabularyLike) -> seqio.Vocabulary:
  """``"byte"`` -> ByteVocabulary; any other string -> SentencePiece model path.

  A ``seqio.Vocabulary`` passes through unchanged, so callers may accept either.
  """
  if isinstance(name_or_path, seqio.Vocabulary):
    return name_or_path
  if name_or_path == BYTE:
    return byte_vocabulary()
  return sentencepiece_vocabulary(name_or_path)


def vocabulary_key(vocabulary: seqio.Vocabulary) -> str:
  """A stable string naming a vocabulary (registration keys, CLI output)."""
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return f"{BYTE}+{vocabulary.extra_ids}"
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return f"{vocabulary.sentencepiece_model_file}+{vocabulary.extra_ids}"
  return repr(vocabulary)


class VocabularyError(ValueError):
  """A vocabulary that cannot be found, or does not fit the model."""


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def find_in_dir(directory: str) -> Optional[str]:
  """The vocabulary a checkpoint directory carries: ``"byte"``, a SentencePiece
  model path, or None.

  Looks for ``vocabulary.json`` (written by :func:`save_to_model_dir`), then
  ``spiece.model`` (HF T5 directories, our ``MODEL_DIR``s), then an HF
  ``tokenizer.json`` (converted to the equivalent SentencePiece model,
  :func:`sentencepiece_from_tokenizer_json`).
  """
  if not directory or not isinstance(directory, str) or directory.startswith(
      ("gs://", "s3://")) or not os.path.isdir(directory):
    return None
  record = os.path.join(directory, RECORD)
  if os.path.exists(record):
    with open(record, encoding="utf-8") as f:
      info = json.load(f)
    if info.get("kind") == BYTE:
      return BYTE
    path = os.path.join(directory, info.get("file", SPIECE))
    if not os.path.exists(path):
      raise VocabularyError(f"{record} names {path}, which does not exist.")
    return path
  spiece = os.path.join(directory, SPIECE)
  if os.path.exists(spiece):
    return spiece
  tokenizer_json = os.path.join(directory, TOKENIZER_JSON)
  if os.path.exists(tokenizer_json):
    return sentencepiece_from_tokenizer_json(tokenizer_json)
  return None


def _cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "hyper_tasks", "vocabularies")


def sentencepiece_from_tokenizer_json(path: str,
                                      cache_dir: Optional[str] = None) -> str:
  """A SentencePiece model file equivalent to an HF T5 ``tokenizer.json``.

  HF T5 directories may ship only the fast tokenizer's ``tokenizer.json`` (a
  Unigram model with the precompiled normalizer and a Metaspace pre-tokenizer,
  exactly what ``spiece.model`` holds); the tf.data pipeline tokenizes with
  SentencePiece, so the same pieces, scores and normalizer are written as a
  SentencePiece ``ModelProto`` (the ``<extra_id_N>`` sentinels are left to
  ``extra_ids``, as for ``spiece.model``). Cached by the file's sha256.

  Raises:
    VocabularyError: a ``tokenizer.json`` that is not such a Unigram model,
      naming the file and what is missing.
  """
  with open(path, "rb") as f:
    raw = f.read()
  digest = hashlib.sha256(raw).hexdigest()[:16]
  out = os.path.join(cache_dir or _cache_dir(), f"spiece-{digest}.model")
  if os.path.exists(out):
    return out
  try:
    data = json.loads(raw)
    model = data["model"]
    vocab = model["vocab"]
  except (ValueError, KeyError, TypeError) as e:
    raise VocabularyError(f"{path}: not an HF tokenizer.json (no model.vocab): "
                          f"{e!r}") from e
  if model.get("type") != "Unigram":
    raise VocabularyError(f"{path}: model.type={model.get('type')!r}; only T5's "
                          "Unigram (SentencePiece) tokenizers are supported.")
  normalizer = data.get("normalizer") or {}
  charsmap = normalizer.get("precompiled_charsmap")
  if normalizer.get("type") != "Precompiled" or not charsmap:
    raise VocabularyError(f"{path}: normalizer {normalizer.get('type')!r} has no "
                          "precompiled_charsmap (not a SentencePiece export).")
  import base64  # pylint: disable=g-import-not-at-top
  from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=g-import-not-at-top
  sentinels = [a["id"] for a in data.get("added_tokens", [])
               if str(a.get("content", "")).startswith("<extra_id_")]
  n = min(sentinels) if sentinels else len(vocab)
  special = {PAD_ID: pb.ModelProto.SentencePiece.CONTROL,
             EOS_ID: pb.ModelProto.SentencePiece.CONTROL,
             model.get("unk_id", 2): pb.ModelProto.SentencePiece.UNKNOWN}
  proto = pb.ModelProto()
  for i, (piece, score) in enumerate(vocab[:n]):
    entry = proto.pieces.add()
    entry.piece, entry.score = piece, float(score)
    entry.type = special.get(i, pb.ModelProto.SentencePiece.NORMAL)
  spec = proto.trainer_spec
  spec.model_type = pb.TrainerSpec.UNIGRAM
  spec.vocab_size = n
  spec.unk_id, spec.eos_id, spec.pad_id, spec.bos_id = (
      model.get("unk_id", 2), EOS_ID, PAD_ID, -1)
  spec.unk_piece, spec.eos_piece, spec.pad_piece = (
      vocab[spec.unk_id][0], vocab[EOS_ID][0], vocab[PAD_ID][0])
  norm = proto.normalizer_spec
  norm.name = "nmt_nfkc"
  norm.precompiled_charsmap = base64.b64decode(charsmap)
  norm.add_dummy_prefix = True
  norm.remove_extra_whitespaces = True
  norm.escape_whitespaces = True
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = f"{out}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(proto.SerializeToString())
  os.replace(tmp, out)
  logging.info("Vocabulary: %s converted to SentencePiece %s.", path, out)
  return out


def resolve(spec: VocabularyLike = AUTO,
            search_dirs: Sequence[Optional[str]] = ()) -> seqio.Vocabulary:
  """The vocabulary named by ``spec``; ``"auto"`` searches for one.

  Args:
    spec: ``"byte"``, a SentencePiece model path (or a directory holding one), a
      ``seqio.Vocabulary``, or ``"auto"``: the first of ``search_dirs`` that
      carries a vocabulary (:func:`find_in_dir`), else ``$HYPER_TASKS_VOCABULARY``.
    search_dirs: checkpoint directories, most specific first (``None`` and
      non-strings, e.g. unset gin macros, are skipped).

  Raises:
    VocabularyError: ``"auto"`` found nothing, naming where it looked.
    FileNotFoundError: a SentencePiece path that does not exist.
  """
  if spec != AUTO:
    return get_vocabulary(spec)
  looked = []
  for directory in search_dirs:
    if not isinstance(directory, str) or not directory:
      continue
    looked.append(directory)
    found = find_in_dir(directory)
    if found:
      logging.info("Vocabulary: %s (from %s).", found, directory)
      return get_vocabulary(found)
  env = os.environ.get(VOCABULARY_ENV)
  if env:
    logging.info("Vocabulary: %s (from $%s).", env, VOCABULARY_ENV)
    return get_vocabulary(env)
  raise VocabularyError(
      "VOCABULARY = 'auto' found no vocabulary: no vocabulary.json or "
      f"{SPIECE} in {looked or 'any checkpoint directory (none configured)'} and "
      f"${VOCABULARY_ENV} is unset. Set VOCABULARY='/path/to/{SPIECE}' (gin), "
      f"${VOCABULARY_ENV}, or VOCABULARY='byte' for the byte vocabulary.")


def size(vocabulary: seqio.Vocabulary) -> int:
  """Number of ids the vocabulary produces (sentinels included)."""
  return int(vocabulary.vocab_size)


def check_fits(vocabulary: seqio.Vocabulary, model_vocab_size: int,
               where: str = "") -> None:
  """Refuses data tokenized with a vocabulary that does not fit the model.

  Fits: every id has an embedding (``size <= model_vocab_size``) and the model's
  embedding is not more than twice the vocabulary (T5 pads 32,100 ids to 32,128;
  a byte vocabulary of 259 ids with a 32k-row model means the data and the model
  come from different tokenizers).

  Raises:
    VocabularyError: naming both the vocabulary and the model's size.
  """
  n = size(vocabulary)
  name = vocabulary_key(vocabulary)
  prefix = f"{where}: " if where else ""
  if n > model_vocab_size:
    raise VocabularyError(
        f"{prefix}the data vocabulary {name} has {n} ids but the model's embedding "
        f"has {model_vocab_size} rows (models.make_model.vocab_size / the "
        "checkpoint): ids past the embedding would be read out of range.")
  if model_vocab_size > 2 * n:
    hint = (" The data is tokenized with the byte vocabulary; set VOCABULARY to the "
            "model's SentencePiece model (or 'auto' with a checkpoint that has one)."
            if isinstance(vocabulary, seqio.ByteVocabulary) else "")
    raise VocabularyError(
        f"{prefix}the data vocabulary {name} has {n} ids but the model's embedding "
        f"has {model_vocab_size} rows: the data and the model use different "
        f"vocabularies.{hint}")


def save_to_model_dir(vocabulary: seqio.Vocabulary, model_dir: str) -> None:
  """Records (and for SentencePiece copies) the vocabulary into ``model_dir``, so
  evaluation and the next stage find it (:func:`find_in_dir`).

  Raises:
    VocabularyError: ``model_dir`` already records a different vocabulary.
  """
  if isinstance(vocabulary, seqio.ByteVocabulary):
    info = {"kind": BYTE, "extra_ids": int(vocabulary.extra_ids)}
  elif isinstance(vocabulary, seqio.SentencePieceVocabulary):
    src = vocabulary.sentencepiece_model_file
    info = {"kind": "sentencepiece", "file": SPIECE,
            "extra_ids": int(vocabulary.extra_ids),
            "sha256": None if src.startswith("gs://") else _sha256(src)}
  else:
    return
  if "://" in model_dir:
    logging.info("Vocabulary not recorded in %s (remote MODEL_DIR).", model_dir)
    return
  record = os.path.join(model_dir, RECORD)
  if os.path.exists(record):
    with open(record, encoding="utf-8") as f:
      old = json.load(f)
    if (old.get("kind"), old.get("sha256"), old.get("extra_ids")) != (
        info["kind"], info.get("sha256"), info["extra_ids"]):
      raise VocabularyError(
          f"{record}: MODEL_DIR was trained with vocabulary {old}, the data now "
          f"uses {vocabulary_key(vocabulary)}; use a new MODEL_DIR or the old "
          "vocabulary.")
    return
  if info["kind"] == "sentencepiece":
    dst = os.path.join(model_dir, SPIECE)
    if os.path.abspath(src) != os.path.abspath(dst):
      if src.startswith("gs://"):
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        tf.io.gfile.copy(src, dst, overwrite=True)
      else:
        shutil.copyfile(src, dst)
  with open(record, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)
