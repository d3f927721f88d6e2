"""seqio registration of Super-NaturalInstructions formats (reader: sni.py).

For a directory in the official layout and each format ``<fmt>`` (sni.py), with
``<prefix>`` ``sni`` (or ``esni`` for the embedded tasks):

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
"""
from __future__ import annotations

import functools
import os
from typing import Optional, Sequence

import gin

from hyper_tasks.data import registry
from hyper_tasks.data import sni
from hyper_tasks.data import sources
from hyper_tasks.data import vocab as vocab_lib

EMBEDDED_SNI_DIR = os.path.join(os.path.dirname(__file__), "embedded", "sni")


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
def _records(load_args: tuple, which: str, fmt_name: str,
             validation: bool) -> tuple[dict, ...]:
  tasks = _load(load_args[0], which, *load_args[1:])
  return tuple(sni.format_tasks(tasks, sni.parse_format(fmt_name),
                                validation=validation))


def _split_records(load_args: tuple, which: str, fmt_name: str,
                   split: str) -> tuple[dict, ...]:
  return _records(load_args, which, fmt_name, split == "validation")


@gin.configurable(module="hyper_tasks.data")
def register_sni(sni_dir: str,
                 vocabulary: vocab_lib.VocabularyLike = vocab_lib.BYTE,
                 *,
                 prefix: str = "sni",
                 formats: Sequence[str] = sni.DEFAULT_FORMATS,
                 split_name: str = "default",
                 max_instances_per_task: int = sni.DEFAULT_MAX_INSTANCES,
                 max_validation_per_task: int = sni.DEFAULT_MAX_VALIDATION,
                 seed: int = 0,
                 english_only: bool = True,
                 skip_bad_files: bool = False,
                 allow_missing_tasks: bool = False,
                 shuffle_buffer_size: int = 1000) -> list[str]:
  """Registers ``<prefix>_<fmt>_{train,test}`` tasks and ``<prefix>_<fmt>`` mixtures.

  Args:
    sni_dir: SNI root (``tasks/``, ``splits/<split_name>/``).
    vocabulary: ``"byte"``, a SentencePiece path, or a seqio vocabulary.
    prefix: name prefix.
    formats: format names (sni.parse_format).
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
  names = []
  for fmt_name in formats:
    sni.parse_format(fmt_name)  # Validate the name now.
    members = []
    for which, splits in (("train", ("train", "validation")),
                          ("test", ("test",))):
      name = f"{prefix}_{fmt_name}_{which}"
      fn = sources.records_fn(
          functools.partial(_split_records, load_args, which, fmt_name))
      registry.add_task(
          name, ("sni", load_args, which, fmt_name, shuffle_buffer_size, vkey),
          functools.partial(sources.text_task_kwargs,
                            sources.RecordsSource(fn, splits), vocabulary,
                            shuffle_buffer_size=shuffle_buffer_size))
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
                      formats=formats or sni.DEFAULT_FORMATS,
                      max_instances_per_task=20)
