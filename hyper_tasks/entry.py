"""The start-up shared by the gin entry points (train, eval, infer).

``python -m hyper_tasks.train``, ``python -m hyper_tasks.eval`` and
``python -m hyper_tasks.infer`` all start the same way, in :func:`run_gin_main`:
parse the gin flags (``--gin_file``, ``--gin_bindings``, ``--gin.NAME=value``,
``--gin_search_paths``; see ``gin_utils``) and the ``--check`` flags, parse the
gin configuration, register the data sources (``data.register.register_all``,
gin-configurable), then call the entry point's gin-configured function: with
``check=preflight.CheckOptions(...)`` under ``--check`` (printing its report(s);
exit code 1 with the error on failure), without arguments otherwise.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any, Callable, Optional

import jax

from hyper_tasks import gin_utils
from hyper_tasks.data import register
from hyper_tasks.train import preflight


def run_gin_main(argv: Optional[Sequence[str]], module_name: str, fn_name: str,
                 *, description: str, prog: Optional[str] = None,
                 on_check: Optional[Callable[[Any], None]] = None,
                 on_result: Optional[Callable[[Any], None]] = None) -> int:
  """Parses flags and gin, registers data, calls ``module_name.fn_name``.

  Args:
    argv: command-line arguments (None: ``sys.argv[1:]``).
    module_name, fn_name: the gin-configurable function to call, looked up in
      the imported module (under ``python -m`` the running ``__main__`` is a
      second copy of the module whose function gin does not configure).
    description, prog: for ``--help``.
    on_check: called with the check report(s) after they are printed.
    on_result: called with the function's result after a normal run.

  Returns:
    The exit code: 0, or that of ``preflight.print_failure`` for a failed check.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  dotted, rest = gin_utils.split_gin_args(argv)
  parser = argparse.ArgumentParser(prog=prog, description=description)
  gin_utils.add_gin_flags(parser)
  gin_utils.add_check_flags(parser)
  namespace = parser.parse_args(rest)
  gin_utils.prepare_check(namespace)
  if namespace.check_devices:
    # JAX is imported already: its platform setting must be updated, not just
    # the environment (backends start later, so this takes effect).
    jax.config.update("jax_platforms", "cpu")
  gin_utils.parse_from_args(gin_utils.gin_args_from(namespace, dotted))
  fn = getattr(importlib.import_module(module_name), fn_name)
  if namespace.check:
    try:
      register.register_all()
      preflight.verify_devices(namespace.check_devices)
      out = fn(check=preflight.CheckOptions(compile=namespace.compile))
    except Exception as e:  # pylint: disable=broad-except
      return preflight.print_failure(e)
    for report in out if isinstance(out, list) else [out]:
      print(report.format(), flush=True)
    if on_check is not None:
      on_check(out)
    return 0
  register.register_all()
  result = fn()
  if on_result is not None:
    on_result(result)
  return 0


def run_as_script(module_name: str) -> None:
  """``if __name__ == "__main__"`` of an entry point: logging, then the module's
  ``main()`` (imported by name: under ``python -m`` the running ``__main__`` is a
  second copy whose functions gin does not configure) as the exit code."""
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter.
  sys.exit(importlib.import_module(module_name).main())
