"""Where gin files are found: search paths, file and ``include`` resolution.

The bottom of the configuration layer: :mod:`hyper_tasks.gin_macros` (macro checks)
and :mod:`hyper_tasks.gin_utils` (flags, parsing) both build on it. See
:mod:`hyper_tasks.gin_utils` for the search order.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Optional

import gin

GIN_DIR_ENV = "HYPER_TASKS_GIN_DIR"


class GinConfigError(ValueError):
  """A gin file or binding that cannot be applied."""


def default_search_paths() -> list[str]:
  """``$HYPER_TASKS_GIN_DIR``, the repo's ``gin/`` dir, the current directory."""
  paths = []
  env = os.environ.get(GIN_DIR_ENV)
  if env:
    paths += [p for p in env.split(os.pathsep) if p]
  package_dir = os.path.dirname(os.path.abspath(__file__))
  for candidate in (os.path.join(os.path.dirname(package_dir), "gin"),
                    os.path.join(package_dir, "gin")):
    if os.path.isdir(candidate):
      paths.append(candidate)
  paths.append(os.getcwd())
  return paths


def repo_gin_dir() -> Optional[str]:
  """The repository's ``gin/`` directory, if found."""
  for path in default_search_paths():
    if os.path.isdir(os.path.join(path, "experiments")):
      return path
  return None


class _PathProbeFilter(logging.Filter):
  """Drops gin's ERROR "Path not found" logged for every search path it probes."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.module == "resource_reader"
                and str(record.msg).startswith("Path not found"))


def quiet_gin_path_probes() -> None:
  root = logging.getLogger()
  if not any(isinstance(f, _PathProbeFilter) for f in root.filters):
    root.addFilter(_PathProbeFilter())


def resolve_file(path: str, search_paths: Sequence[str]) -> str:
  """A gin file given on the command line: a path that exists, else the first
  search path that holds it."""
  path = os.path.expanduser(path)
  if os.path.isabs(path):
    if os.path.isfile(path):
      return path
    raise GinConfigError(f"gin file {path!r} not found.")
  if os.path.isfile(path):
    return os.path.abspath(path)
  for base in search_paths:
    candidate = os.path.join(base, path)
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  raise GinConfigError(f"gin file {path!r} not found (searched {list(search_paths)}).")


@contextlib.contextmanager
def include_resolution(search_paths: Sequence[str]):
  """Makes gin resolve ``include`` statements against ``search_paths`` only.

  Gin's defaults depend on the working directory's contents: its first location
  prefix is ``''`` (the working directory, ahead of every search path), and its
  package-resource reader takes any folder on ``sys.path`` (``runs/`` in the
  repository root after a demo, since ``python -m`` puts the working directory on
  ``sys.path``) for a Python package and crashes on it. While parsing, the prefixes
  are exactly ``search_paths`` (the working directory last, from
  :func:`default_search_paths`) and the reader is a plain file reader; absolute
  includes are read as they are. Restored afterwards.
  """
  config = gin.config
  saved = (list(config._LOCATION_PREFIXES), list(config._FILE_READERS))  # pylint: disable=protected-access
  config._LOCATION_PREFIXES[:] = [os.path.abspath(p) for p in search_paths]  # pylint: disable=protected-access
  config._FILE_READERS[:] = [(open, os.path.isfile)]  # pylint: disable=protected-access
  try:
    yield
  finally:
    config._LOCATION_PREFIXES[:] = saved[0]  # pylint: disable=protected-access
    config._FILE_READERS[:] = saved[1]  # pylint: disable=protected-access
