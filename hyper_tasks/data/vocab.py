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
"""
from __future__ import annotations

import functools
import os
from typing import Union

import seqio

BYTE = "byte"
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
