"""Idempotent seqio registration and the one entry point, ``register_all``.

Nothing is registered at import time. Each source module exposes a
``register_<source>(...)`` function; ``register_all`` calls those whose data was
given, plus the embedded default (toy tasks, the embedded SNI-format tasks and the
embedded pretraining text), which needs no argument and no network.

Registration is idempotent by construction: every task and mixture is added
through ``add_task`` / ``add_mixture``, which remember the key (source arguments
and vocabulary) a name was registered with. Registering the same name with the
same key again is a no-op; with a different key the old provider is replaced, so
calling ``register_all`` twice, or again with another vocabulary, is safe.
Mixtures resolve their tasks when built, so a source re-adds its mixtures after
its tasks.
"""
from __future__ import annotations

import fnmatch
import logging
from typing import Any, Callable, Hashable, Optional, Sequence

import gin
import seqio

from hyper_tasks.data import vocab as vocab_lib

# name -> registration key, for providers this package added.
_KEYS: dict[str, Hashable] = {}
# name -> whether load_examples can read it as text (False: token-level tasks
# such as C4 splitting, whose text is decoded back from tokens).
_TEXT_LEVEL: dict[str, bool] = {}
# name -> how evaluation scores the task (one of EVALUATION_MODES).
_EVALUATION_MODE: dict[str, str] = {}

# Evaluation modes. RANK: every example is several rows, one per answer choice
# (``choice_index``, ``is_correct``, ``num_choices``), and the choice the model
# scores highest is the prediction (P3's held-out ``*_score_eval`` tasks).
# GENERATION: the model decodes and the text is compared with the targets.
RANK = "rank"
GENERATION = "generation"
EVALUATION_MODES = (RANK, GENERATION)


def add_task(name: str, key: Hashable, build: Callable[[], dict[str, Any]],
             *, text_level: bool = True,
             evaluation_mode: str = GENERATION) -> None:
  """Adds a seqio Task unless one was added under ``name`` with the same key.

  Args:
    name: seqio task name.
    key: anything hashable that changes when the task's content would.
    build: returns the ``seqio.TaskRegistry.add`` keyword arguments (called only
      when the task is (re)built, so expensive setup is skipped on no-ops).
    text_level: whether the task's text can be read before tokenization.
    evaluation_mode: how evaluation scores the task: ``RANK`` (its examples
      are answer-choice rows) or ``GENERATION`` (the default).

  Raises:
    ValueError: an unknown ``evaluation_mode``.
  """
  if evaluation_mode not in EVALUATION_MODES:
    raise ValueError(f"Unknown evaluation mode {evaluation_mode!r}; use one "
                     f"of {EVALUATION_MODES}.")
  _EVALUATION_MODE[name] = evaluation_mode
  if _KEYS.get(name) == key and name in seqio.TaskRegistry.names():
    return
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, **build())
  _KEYS[name] = key
  _TEXT_LEVEL[name] = text_level


def add_mixture(name: str, key: Hashable,
                tasks: Sequence[Any], **kwargs) -> None:
  """Adds a seqio Mixture (rebuilt whenever its key or any member changed)."""
  member_keys = tuple(_KEYS.get(t if isinstance(t, str) else t[0])
                      for t in tasks)
  full_key = (key, member_keys)
  if _KEYS.get(name) == full_key and name in seqio.MixtureRegistry.names():
    return
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(tasks), **kwargs)
  _KEYS[name] = full_key


def is_text_level(name: str) -> bool:
  """Whether ``name``'s examples are text before tokenization (see load_examples)."""
  if name in seqio.MixtureRegistry.names():
    return all(is_text_level(t.name)
               for t in seqio.MixtureRegistry.get(name).tasks)
  return _TEXT_LEVEL.get(name, True)


def evaluation_mode(name: str) -> str:
  """How evaluation scores task or mixture ``name``: ``RANK`` or ``GENERATION``.

  A task's mode is the one its source registered it with; a task this package
  did not add is ``GENERATION``. A mixture's is its tasks' common mode.

  Raises:
    ValueError: a mixture whose tasks are scored in different modes (evaluate
      its tasks one by one).
  """
  if name in seqio.MixtureRegistry.names():
    modes = {t.name: evaluation_mode(t.name)
             for t in seqio.MixtureRegistry.get(name).tasks}
    if len(set(modes.values())) > 1:
      raise ValueError(f"Mixture {name!r} mixes evaluation modes {modes}; "
                       "ask for the mode of each task.")
    return next(iter(modes.values()), GENERATION)
  return _EVALUATION_MODE.get(name, GENERATION)


def registered_names(pattern: Optional[str] = None) -> dict[str, list[str]]:
  """Tasks and mixtures this package registered, optionally filtered by glob."""
  tasks = sorted(n for n in _KEYS if n in seqio.TaskRegistry.names())
  mixtures = sorted(n for n in _KEYS if n in seqio.MixtureRegistry.names())
  if pattern:
    tasks = fnmatch.filter(tasks, pattern)
    mixtures = fnmatch.filter(mixtures, pattern)
  return {"tasks": tasks, "mixtures": mixtures}


def unregister_all() -> None:
  """Removes every provider this package registered (tests, notebooks)."""
  for name in list(_KEYS):
    seqio.MixtureRegistry.remove(name)
  for name in list(_KEYS):
    seqio.TaskRegistry.remove(name)
  _KEYS.clear()
  _TEXT_LEVEL.clear()
  _EVALUATION_MODE.clear()


@gin.configurable(module="hyper_tasks.data")
def register_embedded(vocabulary: vocab_lib.VocabularyLike = vocab_lib.BYTE
                      ) -> list[str]:
  """Registers the embedded default: toy tasks, ``esni_*``, ``embedded_pretrain``.

  Needs no argument and no network; returns the names registered.
  """
  # Imported here: the source modules import this one.
  from hyper_tasks.data import c4, sni_tasks, toy  # pylint: disable=g-import-not-at-top
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
  from hyper_tasks.data import c4, p3_tasks, sni_tasks  # pylint: disable=g-import-not-at-top
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
