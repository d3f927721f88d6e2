"""Gin flags shared by every entry point (t5x style).

  --gin_file=experiments/hint_finetune_sni.gin   (repeatable; relative to search paths)
  --gin.MODEL_DIR="'runs/my_run'"                   (any binding; repeatable)
  --gin_bindings="train.num_steps = 10"          (t5x spelling, repeatable)
  --gin_search_paths=/my/gin,/other              (comma-separated; default below)

Search paths: the given ones, then ``$HYPER_TASKS_GIN_DIR`` (colon-separated) when
set, then the repository's ``gin/`` directory found next to the package (a source
checkout or an editable install) or inside it (``hyper_tasks/gin`` in a wheel), then
the current directory. A ``--gin_file`` is a path that exists or a name in the
search paths; ``include`` statements inside gin files resolve against the search
paths (and the folders of the given files) only, in that order, so the working
directory's contents (a ``runs/`` folder, a stray ``models/``) cannot shadow or
break the repository's files.

Every module that defines configurables is imported first
(:func:`import_configurables`), so a binding for an unknown configurable or
parameter fails with :class:`GinConfigError` naming the binding or file instead of
gin's generic message. :func:`write_operative_config` writes
``MODEL_DIR/config.gin``.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
from collections.abc import Iterable, Sequence
from typing import Optional

import gin

from hyper_tasks import gin_macros
# Re-exported: callers name them gin_utils.* (the gin-file layer is below).
from hyper_tasks.gin_paths import (GIN_DIR_ENV, GinConfigError,  # pylint: disable=unused-import
                                   default_search_paths, include_resolution,
                                   quiet_gin_path_probes, repo_gin_dir,
                                   resolve_file)

CONFIG_FILE = "config.gin"

# Modules never imported for their configurables (entry points, scripts).
_SKIP_MODULES = ("__main__", "hyper_tasks.cli", "hyper_tasks.demo", "hyper_tasks.sweep")


@dataclasses.dataclass
class GinArgs:
  """Parsed gin flags."""
  gin_files: list[str]
  bindings: list[str]
  search_paths: list[str]


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
  """Adds ``--gin_file``, ``--gin_bindings`` and ``--gin_search_paths``."""
  parser.add_argument("--gin_file", "--gin_files", action="append", default=[],
                      dest="gin_file", help="gin file (repeatable).")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="gin binding, e.g. \"train.num_steps = 10\" (repeatable).")
  parser.add_argument("--gin_search_paths", action="append", default=[],
                      help="comma-separated directories searched for gin files "
                           "and includes.")


def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Pulls ``--gin.NAME=VALUE`` (or ``--gin.NAME VALUE``) out of ``argv``.

  Returns:
    ``(bindings like "NAME = VALUE", remaining argv)``.
  """
  bindings, rest = [], []
  argv = list(argv)
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--gin."):
      body = arg[len("--gin."):]
      if "=" in body:
        name, value = body.split("=", 1)
      else:
        if i + 1 >= len(argv):
          raise GinConfigError(f"{arg}: missing value.")
        name, value = body, argv[i + 1]
        i += 1
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
    i += 1
  return bindings, rest


def gin_args_from(namespace: argparse.Namespace, dotted: Sequence[str]) -> GinArgs:
  paths = [p for group in namespace.gin_search_paths for p in group.split(",") if p]
  return GinArgs(list(namespace.gin_file), list(namespace.gin_bindings) + list(dotted),
                 paths)


def configurable_modules() -> list[str]:
  """Every module of the package whose source registers gin configurables.

  Found by a text scan (no imports), so configurables added anywhere in the package
  are known before the config is parsed and locked.
  """
  package_dir = os.path.dirname(os.path.abspath(__file__))
  root = os.path.dirname(package_dir)
  names = []
  for dirpath, dirnames, filenames in os.walk(package_dir):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
    for filename in sorted(filenames):
      if not filename.endswith(".py"):
        continue
      path = os.path.join(dirpath, filename)
      module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
      module = module[:-len(".__init__")] if module.endswith(".__init__") else module
      if module.endswith(_SKIP_MODULES) or module in _SKIP_MODULES:
        continue
      with open(path, encoding="utf-8") as f:
        text = f.read()
      if "gin.configurable" in text or "gin.register" in text:
        names.append(module)
  return names


def import_configurables(modules: Optional[Iterable[str]] = None) -> None:
  """Imports every module that registers configurables (default: all of them)."""
  for name in configurable_modules() if modules is None else modules:
    if name == __name__:
      continue
    importlib.import_module(name)


def _clear_error(e: Exception, where: str) -> GinConfigError:
  return GinConfigError(f"{where}: {e}")


def parse(gin_files: Sequence[str] = (), bindings: Sequence[str] = (),
          search_paths: Sequence[str] = (), finalize: bool = True,
          import_modules: bool = True) -> None:
  """Parses gin files then bindings (bindings override files).

  Raises:
    GinConfigError: a missing file, an unknown configurable or parameter, or a
      malformed binding; the message names the file or binding.
  """
  if import_modules:
    import_configurables()
  quiet_gin_path_probes()
  paths = list(search_paths) + default_search_paths()
  resolved_files = [resolve_file(f, paths) for f in gin_files]
  # A user's own file may include files beside it (after the given search paths,
  # before the repository's gin/ and the working directory).
  own_dirs = [os.path.dirname(f) for f in resolved_files]
  include_paths = list(dict.fromkeys(
      [os.path.abspath(p) for p in search_paths] + own_dirs
      + [os.path.abspath(p) for p in default_search_paths()]))
  with include_resolution(include_paths):
    for resolved in resolved_files:
      try:
        gin.parse_config_file(resolved)
      except (ValueError, KeyError, SyntaxError, IOError, TypeError) as e:
        raise _clear_error(e, f"gin file {resolved}") from e
    for b in bindings:
      try:
        gin.parse_config(b)
      except (ValueError, KeyError, SyntaxError, IOError, TypeError) as e:
        raise _clear_error(e, f"gin binding {b!r}") from e
    # User-bound macros that nothing reads are errors (hyper_tasks/gin_macros.py).
    gin_macros.check_user_macros(resolved_files, bindings)
  if finalize:
    try:
      gin.finalize()
    except ValueError as e:
      raise GinConfigError(f"gin config is incomplete: {e}") from e


def parse_from_args(args: GinArgs, finalize: bool = True) -> None:
  parse(args.gin_files, args.bindings, args.search_paths, finalize=finalize)


def write_operative_config(model_dir: str) -> str:
  """Writes the operative config (what was actually used) to ``config.gin``."""
  path = os.path.join(model_dir, CONFIG_FILE)
  text = gin.operative_config_str() or gin.config_str()
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path


def add_check_flags(parser: argparse.ArgumentParser) -> None:
  """``--check`` / ``--compile`` / ``--check_devices`` (see ``train/preflight.py``)."""
  parser.add_argument("--check", action="store_true",
                      help="resolve and check the configuration (data, vocabulary, "
                           "lengths, mesh, restore plan, lowered step) without "
                           "running it.")
  parser.add_argument("--compile", action="store_true",
                      help="with --check: also compile and report XLA's memory "
                           "analysis.")
  parser.add_argument("--check_devices", type=int, default=None,
                      help="with --check: fake this many CPU devices (a mesh for "
                           "a machine you do not have).")


def prepare_check(namespace: argparse.Namespace) -> None:
  """Applies ``--check_devices`` before JAX starts (call before :func:`parse`;
  ``preflight.verify_devices`` confirms it took effect)."""
  if namespace.compile and not namespace.check:
    raise SystemExit("--compile needs --check.")
  if namespace.check_devices:
    if not namespace.check:
      raise SystemExit("--check_devices needs --check.")
    flag = f"--xla_force_host_platform_device_count={namespace.check_devices}"
    os.environ["XLA_FLAGS"] = " ".join(
        [f for f in os.environ.get("XLA_FLAGS", "").split()
         if not f.startswith("--xla_force_host_platform_device_count")] + [flag])
    os.environ["JAX_PLATFORMS"] = "cpu"
