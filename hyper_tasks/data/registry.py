"""Idempotent seqio registration: the bookkeeping every source registers through.

The bottom of the data sources: ``add_task`` / ``add_mixture`` (what each source's
``register_<source>(...)`` calls), what was recorded with each name
(``is_text_level``, ``evaluation_mode``), ``registered_names`` and
``unregister_all``. It imports no source; the entry points that call the sources,
``register_all`` and ``register_embedded``, live above them in ``register.py``.

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
from typing import Any, Callable, Hashable, Optional, Sequence

import seqio

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


def registration_key(name: str) -> Optional[Hashable]:
  """The key ``name`` was registered with (None: not added by this package)."""
  return _KEYS.get(name)


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
