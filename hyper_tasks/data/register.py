"""The registration entry points: ``register_all`` and ``register_embedded``.

Nothing is registered at import time. Each source module exposes a
``register_<source>(...)`` function; ``register_all`` calls those whose data was
given, plus the embedded default (toy tasks, the embedded SNI-format tasks and the
embedded pretraining text), which needs no argument and no network.

This module sits above the sources (``c4``, ``p3_tasks``, ``sni_tasks``, ``toy``);
the bookkeeping they register through (``add_task``, ``add_mixture``) is
``registry.py``, below them. Both functions are gin-configurable in module
``hyper_tasks.data`` (the run files bind ``register_all.*``) and safe to call
more than once (see ``registry.py``).
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import gin

from hyper_tasks.data import c4
from hyper_tasks.data import p3_tasks
from hyper_tasks.data import sni_tasks
from hyper_tasks.data import toy
from hyper_tasks.data import vocab as vocab_lib


@gin.configurable(module="hyper_tasks.data")
def register_embedded(vocabulary: vocab_lib.VocabularyLike = vocab_lib.BYTE
                      ) -> list[str]:
  """Registers the embedded default: toy tasks, ``esni_*``, ``embedded_pretrain``.

  Needs no argument and no network; returns the names registered.
  """
  names = toy.register_toy(vocabulary=vocabulary)
  names += sni_tasks.register_embedded_sni(vocabulary=vocabulary)
  names += c4.register_embedded_pretrain(vocabulary=vocabulary)
  return names


@gin.configurable(module="hyper_tasks.data")
def register_all(sni_dir: Optional[str] = None,
                 p3_templates_dir: Optional[str] = None,
                 p3_data_dir: Optional[str] = None,
                 c4_path: Optional[str] = None,
                 vocabulary: vocab_lib.VocabularyLike = vocab_lib.BYTE,
                 *,
                 vocabulary_dirs: Sequence[Optional[str]] = (),
                 sni_max_instances_per_task: int = 100,
                 sni_skip_bad_files: bool = False,
                 sni_allow_missing_tasks: bool = False,
                 tfds_data_dir: Optional[str] = None,
                 p3_instruction: str = "template",
                 p3_few_shot_format: str = "flan") -> list[str]:
  """Registers every source whose data was given, plus the embedded default.

  Safe to call more than once (see the module docstring).

  Args:
    sni_dir: Super-NaturalInstructions checkout (``tasks/``, ``splits/``) ->
      ``sni_<format>_{train,test}``.
    p3_templates_dir: promptsource templates (``<dataset>/<subset>/templates.yaml``)
      -> ``t0_*`` (needs ``p3_data_dir`` or the ``datasets`` package).
    p3_data_dir: local datasets as ``<dataset>/<subset>/<split>.jsonl`` (Hugging
      Face schema).
    c4_path: ``"tfds"`` (TFDS ``c4/en``) or local jsonl/text files (file, glob or
      directory) -> ``c4_hyper_pretrain`` and ``c4_hyper_pretrain_4part``.
    vocabulary: ``"byte"``, a SentencePiece model path, or ``"auto"`` (the run
      files' default: see ``vocab.resolve``), for every task.
    vocabulary_dirs: checkpoint directories ``"auto"`` looks in, most specific
      first (the run files bind ``MODEL_DIR`` and the checkpoint restored).
    sni_max_instances_per_task: SNI instances per task (train and test).
    sni_skip_bad_files: skip malformed SNI task files (logged) instead of failing.
    sni_allow_missing_tasks: skip SNI tasks listed in a split but absent from
      ``tasks/`` (a partial copy of the repository).
    tfds_data_dir: TFDS data directory for ``c4_path="tfds"``.
    p3_instruction: P3 ``hyper_inputs``: ``"template"`` (one blanked template
      per (dataset, template), HINT's default) or ``"prompt"`` (each example's
      rendered prompt); see ``p3_tasks.register_t0``.
    p3_few_shot_format: P3 exemplars: ``"flan"`` (HINT's) or ``"newline"``.

  Returns:
    The task and mixture names registered.
  """
  vocabulary = vocab_lib.resolve(vocabulary, vocabulary_dirs)
  names = register_embedded(vocabulary=vocabulary)
  if sni_dir:
    names += sni_tasks.register_sni(
        sni_dir, vocabulary=vocabulary,
        max_instances_per_task=sni_max_instances_per_task,
        skip_bad_files=sni_skip_bad_files,
        allow_missing_tasks=sni_allow_missing_tasks)
  if p3_templates_dir:
    names += p3_tasks.register_t0(p3_templates_dir, data_dir=p3_data_dir,
                                  vocabulary=vocabulary,
                                  instruction=p3_instruction,
                                  few_shot_format=p3_few_shot_format)
  if c4_path:
    names += c4.register_c4(c4_path, vocabulary=vocabulary,
                            tfds_data_dir=tfds_data_dir)
  logging.info("hyper_tasks.data: %d tasks and mixtures registered.", len(names))
  return names
