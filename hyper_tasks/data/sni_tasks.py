"""seqio registration of Super-NaturalInstructions formats.

Reader: sni.py; formats: sni_formats.py.

For a directory in the official layout and each format ``<fmt>``
(sni_formats.py), with ``<prefix>`` ``sni`` (or ``esni`` for the embedded tasks):

  task ``<prefix>_<fmt>_train``  tasks of ``train_tasks.txt``; splits ``train``
                                (100 sampled instances per task) and
                                ``validation`` (up to 10 other instances per task)
  task ``<prefix>_<fmt>_test``   tasks of ``test_tasks.txt``; split ``test`` (the
                                first 100 instances per task)
  mixture ``<prefix>_<fmt>``     both tasks; ``split`` picks train, validation or
                                test data

Every format reads the same instances, so scores compare across formats. Files are
read when a dataset is first built (not at registration), once per process and
configuration, whichever formats use them.

``demonstration_budget`` (e.g. ``%TASK_FEATURE_LENGTHS``, bound by the SNI
experiments) turns on Tk-Instruct's rule of dropping demonstrations that do not fit
(sni_formats.py), counted with the task's vocabulary.
"""
from __future__ import annotations

import functools
import os
from typing import Mapping, Optional, Sequence

import gin

from hyper_tasks.data import registry
from hyper_tasks.data import sni
from hyper_tasks.data import sni_formats
from hyper_tasks.data import sources
from hyper_tasks.data import vocab as vocab_lib

EMBEDDED_SNI_DIR = os.path.join(os.path.dirname(__file__), "embedded", "sni")
# Features whose length can bound the demonstrations (sni_formats.format_instance).
BUDGET_FEATURES = ("hyper_inputs", "inputs")
# vocabulary_key -> vocabulary, for counting tokens inside the cached builders.
_VOCABULARIES: dict = {}


@functools.lru_cache(maxsize=8)
def _load(sni_dir: str, which: str, split_name: str, max_instances: int,
          max_validation: int, seed: int, english_only: bool,
          skip_bad_files: bool, allow_missing: bool
          ) -> tuple[sni.SniTask, ...]:
  names = sni.read_split(sni_dir, which, split_name)
  return tuple(sni.load_tasks(
      sni_dir, names, test=(which == "test"), max_instances=max_instances,
      max_validation=max_validation, seed=seed, english_only=english_only,
      skip_bad_files=skip_bad_files, allow_missing=allow_missing))


@functools.lru_cache(maxsize=64)
def _records(load_args: tuple, which: str, fmt_name: str, validation: bool,
             budget: tuple = (), vkey: str = "") -> tuple[dict, ...]:
  tasks = _load(load_args[0], which, *load_args[1:])
  counter = sni_formats.token_counter(_VOCABULARIES[vkey]) if budget else None
  return tuple(sni_formats.format_tasks(tasks, sni_formats.parse_format(fmt_name),
                                validation=validation, budget=dict(budget) or None,
                                count_tokens=counter))


def _split_records(load_args: tuple, which: str, fmt_name: str, split: str,
                   budget: tuple = (), vkey: str = "") -> tuple[dict, ...]:
  return _records(load_args, which, fmt_name, split == "validation", budget, vkey)


def budget_items(demonstration_budget: Optional[Mapping[str, int]]) -> tuple:
  """The hashable ``((feature, tokens), ...)`` form of a budget (other keys, such as
  ``targets``, are ignored).

  Raises:
    ValueError: a length that is not a positive integer.
  """
  items = []
  for key in BUDGET_FEATURES:
    value = (demonstration_budget or {}).get(key)
    if value is None:
      continue
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"register_sni: demonstration_budget[{key!r}] must be a "
                       f"positive integer, got {value!r}.")
    items.append((key, value))
  return tuple(items)


@gin.configurable(module="hyper_tasks.data")
def register_sni(sni_dir: str,
                 vocabulary: vocab_lib.VocabularyLike = vocab_lib.BYTE,
                 *,
                 prefix: str = "sni",
                 formats: Sequence[str] = sni_formats.DEFAULT_FORMATS,
                 split_name: str = "default",
                 max_instances_per_task: int = sni.DEFAULT_MAX_INSTANCES,
                 max_validation_per_task: int = sni.DEFAULT_MAX_VALIDATION,
                 seed: int = 0,
                 english_only: bool = True,
                 skip_bad_files: bool = False,
                 allow_missing_tasks: bool = False,
                 shuffle_buffer_size: int = 1000,
                 demonstration_budget: Optional[Mapping[str, int]] = None
                 ) -> list[str]:
  """Registers ``<prefix>_<fmt>_{train,test}`` tasks and ``<prefix>_<fmt>`` mixtures.

  Args:
    sni_dir: SNI root (``tasks/``, ``splits/<split_name>/``).
    vocabulary: ``"byte"``, a SentencePiece path, or a seqio vocabulary.
    prefix: name prefix.
    formats: format names (sni_formats.parse_format).
    split_name: folder under ``splits/``.
    max_instances_per_task: instances per task, train and test.
    max_validation_per_task: validation instances per train task.
    seed: train-instance sampling seed.
    english_only: keep English tasks only.
    skip_bad_files: log and skip malformed task files instead of failing when
      a dataset is built.
    allow_missing_tasks: skip tasks listed in a split file but absent from
      ``tasks/`` (a partial copy); otherwise they fail.
    shuffle_buffer_size: seqio shuffle buffer after tokenization (the source
      already shuffles the whole split).
    demonstration_budget: token budgets by feature (``hyper_inputs``, ``inputs``;
      e.g. the task feature lengths): demonstrations that do not fit are dropped
      whole, as Tk-Instruct does (sni_formats.py). None: every demonstration is kept and
      the feature converter truncates.

  Returns:
    Registered names.

  Raises:
    FileNotFoundError: a missing split file (checked now; task files are read
      later).
  """
  vocabulary = vocab_lib.get_vocabulary(vocabulary)
  sni_dir = os.path.abspath(os.path.expanduser(sni_dir))
  for which in ("train", "test"):
    sni.read_split(sni_dir, which, split_name)  # Fail early on a wrong path.
  load_args = (sni_dir, split_name, max_instances_per_task,
               max_validation_per_task, seed, english_only, skip_bad_files,
               allow_missing_tasks)
  vkey = vocab_lib.vocabulary_key(vocabulary)
  _VOCABULARIES[vkey] = vocabulary
  budget = budget_items(demonstration_budget)
  names = []
  for fmt_name in formats:
    sni_formats.parse_format(fmt_name)  # Validate the name now.
    members = []
    for which, splits in (("train", ("train", "validation")),
                          ("test", ("test",))):
      name = f"{prefix}_{fmt_name}_{which}"
      fn = sources.records_fn(functools.partial(
          _split_records, load_args, which, fmt_name, budget=budget, vkey=vkey))
      registry.add_task(
          name, ("sni", load_args, which, fmt_name, shuffle_buffer_size, vkey,
                 budget),
          functools.partial(sources.text_task_kwargs,
                            sources.RecordsSource(fn, splits), vocabulary,
                            shuffle_buffer_size=shuffle_buffer_size),
          evaluation_mode=registry.GENERATION)
      members.append(name)
    mixture = f"{prefix}_{fmt_name}"
    registry.add_mixture(mixture, ("sni-mixture",), members, default_rate=1.0)
    names += members + [mixture]
  return names


def register_embedded_sni(
    vocabulary: vocab_lib.VocabularyLike = vocab_lib.BYTE,
    formats: Optional[Sequence[str]] = None) -> list[str]:
  """The shipped SNI-format tasks (embedded/sni) as ``esni_*``.

  They hold 20-30 instances each, so 20 per task are used for train and test,
  leaving the rest of each train task for validation.
  """
  return register_sni(EMBEDDED_SNI_DIR, vocabulary, prefix="esni",
                      formats=formats or sni_formats.DEFAULT_FORMATS,
                      max_instances_per_task=20)
