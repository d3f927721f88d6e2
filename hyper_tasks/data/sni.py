"""Super-NaturalInstructions: reading task files.

Layout on disk (the official repository)::

  <sni_dir>/tasks/<task>.json
  <sni_dir>/splits/<split name>/{train,test}_tasks.txt

Reader. Task files come in several schema versions; all are accepted:
``Definition`` as a string or a list of strings (the first is used, as in
Tk-Instruct); instances with or without ``id`` (missing ids become
``<task>-<index in the file>``); language fields present or missing (missing means
English). Instance outputs may be a list or a single string; all are kept as
references. Anything else malformed raises ``SniFormatError`` naming the file and
the field; ``load_tasks(..., skip_bad_files=True)`` logs and skips such files
instead.

Instances per task (Tk-Instruct's protocol): train tasks keep a seeded random
sample of ``max_instances`` (100 by default); test tasks keep the first
``max_instances``. Train tasks also keep up to ``max_validation`` other instances
as a validation split. Only those are held in memory.

Formatting instances into records (Tk-Instruct's and HINT's formats, the token
budget): sni_formats.py.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import zlib
from typing import Any, Optional, Sequence

DEFAULT_MAX_INSTANCES = 100
DEFAULT_MAX_VALIDATION = 10
ENGLISH = "English"
_LANGUAGE_FIELDS = ("Input_language", "Output_language", "Instruction_language")


class SniFormatError(ValueError):
  """A task file that does not follow any known SNI schema (names file and field)."""

  def __init__(self, path: str, field: str, problem: str):
    super().__init__(f"{path}: field {field}: {problem}")
    self.path = path
    self.field = field


@dataclasses.dataclass(frozen=True)
class Demonstration:
  """A positive or negative example of a task definition."""
  input: str
  output: str
  explanation: str = ""


@dataclasses.dataclass(frozen=True)
class Instance:
  id: str
  input: str
  outputs: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SniTask:
  """One task file, with its selected instances.

  Attributes:
    instances: the instances of the main split (train sample or first N).
    validation_instances: train tasks only: further instances, disjoint from
      ``instances``.
  """
  name: str
  path: str
  definition: str
  positive_examples: tuple[Demonstration, ...]
  negative_examples: tuple[Demonstration, ...]
  categories: tuple[str, ...]
  languages: tuple[str, ...]
  instances: tuple[Instance, ...]
  validation_instances: tuple[Instance, ...] = ()

  @property
  def category(self) -> str:
    return self.categories[0] if self.categories else ""

  @property
  def is_english(self) -> bool:
    return all(lang == ENGLISH for lang in self.languages)


# ------------------------------------------------------------------- reading


def _text(value: Any, path: str, field: str, allow_list: bool = True) -> str:
  """A string field; a list yields its first element (older/newer schemas)."""
  if isinstance(value, str):
    return value
  if allow_list and isinstance(value, list):
    if not value:
      raise SniFormatError(path, field, "empty list")
    return _text(value[0], path, f"{field}[0]", allow_list=False)
  raise SniFormatError(path, field,
                       f"expected a string, got {type(value).__name__}")


def _string_list(value: Any, path: str, field: str) -> tuple[str, ...]:
  if value is None:
    return ()
  if isinstance(value, str):
    return (value,)
  if not isinstance(value, list):
    raise SniFormatError(path, field,
                         f"expected a list of strings, got {type(value).__name__}")
  for i, v in enumerate(value):
    if not isinstance(v, str):
      raise SniFormatError(path, f"{field}[{i}]",
                           f"expected a string, got {type(v).__name__}")
  return tuple(value)


def _demonstrations(value: Any, path: str,
                    field: str) -> tuple[Demonstration, ...]:
  if value is None:
    return ()
  if not isinstance(value, list):
    raise SniFormatError(path, field,
                         f"expected a list, got {type(value).__name__}")
  out = []
  for i, item in enumerate(value):
    where = f"'{field}'[{i}]"
    _check_input_output(item, path, where)
    out.append(Demonstration(
        input=_text(item["input"], path, f"{where}.input"),
        output=_text(item["output"], path, f"{where}.output"),
        explanation=_text(item.get("explanation", ""), path,
                          f"{where}.explanation")))
  return tuple(out)


def _check_input_output(item: Any, path: str, where: str) -> None:
  """An example or instance: an object with ``input`` and ``output``."""
  if not isinstance(item, dict):
    raise SniFormatError(path, where,
                         f"expected an object, got {type(item).__name__}")
  for key in ("input", "output"):
    if key not in item:
      raise SniFormatError(path, f"{where}.{key}", "missing")


def _instance(item: Any, index: int, task_name: str, path: str) -> Instance:
  where = f"'Instances'[{index}]"
  _check_input_output(item, path, where)
  outputs = _string_list(item["output"], path, f"{where}.output")
  instance_id = item.get("id")
  if instance_id is None:
    instance_id = f"{task_name}-{index}"
  elif not isinstance(instance_id, str):
    instance_id = str(instance_id)
  return Instance(id=instance_id,
                  input=_text(item["input"], path, f"{where}.input",
                              allow_list=False),
                  outputs=outputs)


def _task_seed(task_name: str, seed: int) -> int:
  return zlib.crc32(f"{task_name}/{seed}".encode())


def read_task_file(path: str,
                   *,
                   test: bool = False,
                   max_instances: Optional[int] = DEFAULT_MAX_INSTANCES,
                   max_validation: int = DEFAULT_MAX_VALIDATION,
                   seed: int = 0,
                   strict: bool = False) -> SniTask:
  """Reads and validates one task file, keeping only the selected instances.

  Args:
    path: ``<sni_dir>/tasks/<task>.json``.
    test: a test task (first ``max_instances``; no validation instances) or a
      train task (seeded random sample of ``max_instances``, then up to
      ``max_validation`` more).
    max_instances: instances kept per task; None keeps all.
    max_validation: validation instances of a train task.
    seed: sampling seed of train tasks.
    strict: an empty ``Instances`` list is an error (otherwise a warning naming
      the task).

  Raises:
    SniFormatError: naming the file and the field at fault (also a file that is
      not UTF-8 or cannot be read).
  """
  task_name = os.path.splitext(os.path.basename(path))[0]
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise SniFormatError(path, "(file)", f"invalid JSON: {e}") from e
  except UnicodeDecodeError as e:
    raise SniFormatError(path, "(file)",
                         f"not valid UTF-8 (byte {e.start}: {e.reason})") from e
  except IsADirectoryError as e:
    raise SniFormatError(path, "(file)", "is a directory") from e
  except PermissionError as e:
    raise SniFormatError(path, "(file)", f"cannot be read: {e.strerror}") from e
  if not isinstance(data, dict):
    raise SniFormatError(path, "(file)", "expected a JSON object")
  if "Definition" not in data:
    raise SniFormatError(path, "'Definition'", "missing")
  definition = _text(data["Definition"], path, "'Definition'")
  if "Instances" not in data:
    raise SniFormatError(path, "'Instances'", "missing")
  raw = data["Instances"]
  if not isinstance(raw, list):
    raise SniFormatError(path, "'Instances'",
                         f"expected a list, got {type(raw).__name__}")
  if not raw:
    if strict:
      raise SniFormatError(path, "'Instances'", "empty (no instances)")
    logging.warning("SNI task %s has no instances (%s): it contributes no "
                    "examples.", task_name, path)
  languages = []
  for field in _LANGUAGE_FIELDS:
    languages += _string_list(data.get(field), path, f"'{field}'")

  indices = list(range(len(raw)))
  validation = []
  if not test:
    # Tk-Instruct samples train instances; the same seed gives the same sample.
    random.Random(_task_seed(task_name, seed)).shuffle(indices)
  if max_instances is not None:
    if not test:
      validation = indices[max_instances:max_instances + max_validation]
    indices = indices[:max_instances]
  # Validate the kept instances only: a task file may hold 100k of them.
  return SniTask(
      name=task_name,
      path=path,
      definition=definition,
      positive_examples=_demonstrations(data.get("Positive Examples"), path,
                                        "Positive Examples"),
      negative_examples=_demonstrations(data.get("Negative Examples"), path,
                                        "Negative Examples"),
      categories=_string_list(data.get("Categories"), path, "'Categories'"),
      languages=tuple(languages),
      instances=tuple(_instance(raw[i], i, task_name, path) for i in indices),
      validation_instances=tuple(
          _instance(raw[i], i, task_name, path) for i in validation),
  )


def read_split(sni_dir: str, which: str, split_name: str = "default"
               ) -> list[str]:
  """Task names listed in ``splits/<split_name>/<which>_tasks.txt``."""
  path = os.path.join(sni_dir, "splits", split_name, f"{which}_tasks.txt")
  if not os.path.exists(path):
    raise FileNotFoundError(f"SNI split file not found: {path}")
  with open(path, encoding="utf-8") as f:
    names = [line.strip() for line in f]
  return [n for n in names if n and not n.startswith("#")]


def load_tasks(sni_dir: str,
               task_names: Sequence[str],
               *,
               test: bool,
               max_instances: Optional[int] = DEFAULT_MAX_INSTANCES,
               max_validation: int = DEFAULT_MAX_VALIDATION,
               seed: int = 0,
               english_only: bool = True,
               skip_bad_files: bool = False,
               allow_missing: bool = False,
               strict: bool = False) -> list[SniTask]:
  """Reads the listed tasks of ``<sni_dir>/tasks``.

  Args:
    sni_dir: SNI root directory.
    task_names: file stems, e.g. from ``read_split``.
    test: see ``read_task_file``.
    max_instances: see ``read_task_file``.
    max_validation: see ``read_task_file``.
    seed: see ``read_task_file``.
    english_only: drop tasks whose (present) language fields are not English.
    skip_bad_files: log and skip malformed files instead of raising.
    allow_missing: skip listed tasks that have no file (a partial copy of the
      repository); otherwise a missing file raises.
    strict: see ``read_task_file`` (empty instance lists are errors).

  Raises:
    SniFormatError: a malformed file, unless ``skip_bad_files``.
    FileNotFoundError: a missing file, unless ``allow_missing`` or
      ``skip_bad_files``.
  """
  tasks, missing = [], []
  for name in task_names:
    path = os.path.join(sni_dir, "tasks", f"{name}.json")
    if allow_missing and not os.path.exists(path):
      missing.append(name)
      continue
    try:
      if not os.path.exists(path):
        raise FileNotFoundError(f"SNI task file not found: {path}")
      task = read_task_file(path, test=test, max_instances=max_instances,
                            max_validation=max_validation, seed=seed,
                            strict=strict)
    except (SniFormatError, FileNotFoundError) as e:
      if not skip_bad_files:
        raise
      logging.warning("Skipping SNI task file: %s", e)
      continue
    if english_only and not task.is_english:
      continue
    tasks.append(task)
  if missing:
    logging.info("SNI: %d of %d listed tasks have no file in %s (skipped).",
                 len(missing), len(task_names), sni_dir)
  return tasks
