"""Macros a user binds must be read by the configuration: a typo is an error.

gin accepts any new macro name: ``--gin.ADAPTR_SIZE=8`` binds a macro that nothing
reads and the run silently uses the unchanged configuration (a sweep over it runs
identical points). :func:`check_user_macros`, called by ``gin_utils.parse`` once the
files and bindings are parsed and before ``gin.finalize`` (so before any data is
registered or any model compiled), raises :class:`UnreadMacroError` (a
``GinConfigError``) for every macro *bound by the user* that no configurable
parameter reads, directly or through other macros' values, in the final
configuration, suggesting the closest macro names that are read::

  ADAPTR_SIZE: no configuration reads this macro; did you mean ADAPTER_SIZE?

Bound by the user means a command-line binding (``--gin.X=...``, ``--gin_bindings``,
a sweep's grid) or a macro first introduced by a gin file outside the repository's
``gin/`` directory (one no repository file of this configuration binds). Macros of
the repository's own files may go unread: ``TINY_*`` names without ``tiny.gin``,
macros read only by evaluation in a training configuration. The data-location
macros ``scripts/_job.sh`` forwards from the environment to every job
(:data:`ENV_FORWARDED_MACROS`) are exempt while that environment variable is set.

It also raises :class:`GinConfigError` for one binding key given twice on the command
line with different values (gin would silently keep the last).

"Reads" is static: a binding of any configurable counts, whether or not the program
calls that configurable (``InitialRestore.path`` reads ``INITIAL_CHECKPOINT_PATH``
even where ``train.initial_restore = None``).

:func:`resolved_parameters` flattens the parsed configuration to
``{"make_peft_spec.adapter_size": 8, ...}`` with macros substituted; the sweep
compares it between grid points.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import gin
from gin import config_parser

from hyper_tasks import gin_paths

_MACRO = "gin.macro"
_CONSTANT = "gin.constant"

# Forwarded by scripts/_job.sh as --gin.NAME='$NAME' to every job when set.
ENV_FORWARDED_MACROS = ("SNI_DIR", "C4_PATH", "P3_TEMPLATES_DIR", "P3_DATA_DIR",
                        "TFDS_DATA_DIR", "INITIAL_CHECKPOINT_PATH")


class UnreadMacroError(gin_paths.GinConfigError):
  """Macros bound by the user that no configurable reads.

  Attributes:
    problems: ``{macro name: message}`` (the message without where it was bound).
  """

  def __init__(self, problems: Mapping[str, str], message: str):
    super().__init__(message)
    self.problems = dict(problems)


@dataclasses.dataclass(frozen=True)
class Ref:
  """A reference in binding text parsed without gin's registry."""
  kind: str  # "@" (configurable) or "%" (macro or constant).
  name: str
  evaluate: bool = True

  def __repr__(self) -> str:
    if self.kind == "%":
      return f"%{self.name}"
    return f"@{self.name}{'()' if self.evaluate else ''}"


class _TextDelegate(config_parser.ParserDelegate):
  """Builds :class:`Ref` placeholders, so any text parses without the registry."""

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return Ref("@", scoped_configurable_name, evaluate)

  def macro(self, macro_name):
    return Ref("%", macro_name)


def statements(text_or_file) -> list[Any]:
  """gin statements (bindings, includes, imports) of binding text or a file."""
  return list(config_parser.ConfigParser(text_or_file, _TextDelegate()))


def parse_value(text: str) -> Any:
  """One gin value (references become :class:`Ref`).

  Raises:
    SyntaxError: text gin cannot read as one value.
  """
  return config_parser.ConfigParser(text, _TextDelegate()).parse_value()


def binding_key(statement: config_parser.BindingStatement) -> tuple[str, bool]:
  """``("ADAPTER_SIZE", True)`` for a macro, ``("train.num_steps", False)`` else."""
  scope = f"{statement.scope}/" if statement.scope else ""
  if not statement.arg_name:
    return f"{scope}{statement.selector}", True
  return f"{scope}{statement.selector}.{statement.arg_name}", False


def bound_keys(text: str) -> list[str]:
  """The keys (``binding_key``) that binding text binds."""
  return [binding_key(st)[0] for st in statements(text)
          if isinstance(st, config_parser.BindingStatement)]


def command_line_macros(bindings: Sequence[str]) -> dict[str, str]:
  """``{macro: binding text}`` of command-line bindings.

  Raises:
    GinConfigError: a key bound twice with different values, naming both bindings.
  """
  seen: dict[str, tuple[Any, str]] = {}
  macros = {}
  for text in bindings:
    try:
      parsed = statements(text)
    except SyntaxError:
      continue  # gin has already named the malformed binding.
    for statement in parsed:
      if not isinstance(statement, config_parser.BindingStatement):
        continue
      key, is_macro = binding_key(statement)
      if key in seen and seen[key][0] != statement.value:
        raise gin_paths.GinConfigError(
            f"{key} is bound twice on the command line with different values: "
            f"{seen[key][1]!r} and {text!r}; give it once.")
      seen[key] = (statement.value, text)
      if is_macro:
        macros[key] = text
  return macros


def _within(path: str, directory: Optional[str]) -> bool:
  if not directory:
    return False
  path, directory = os.path.realpath(path), os.path.realpath(directory)
  try:
    return os.path.commonpath([path, directory]) == directory
  except ValueError:  # Different drives.
    return False


def _resolve_include(name: str) -> Optional[str]:
  """The file gin's ``include`` reads (its search prefixes, in order)."""
  prefixes = [""] if os.path.isabs(name) else gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access
  for prefix in prefixes:
    candidate = os.path.join(prefix, name)
    if os.path.isfile(candidate):
      return candidate
  return None


def file_macros(gin_files: Iterable[str], repo_dir: Optional[str]
                ) -> tuple[dict[str, str], set[str]]:
  """Macros bound by the files and their includes.

  Returns:
    ``({macro: user file that binds it}, {macros some repository file binds})``;
    a file is a repository file when it lies under ``repo_dir``.
  """
  user: dict[str, str] = {}
  repo: set[str] = set()
  visited: set[str] = set()
  todo = [f for f in gin_files]
  while todo:
    path = todo.pop(0)
    real = os.path.realpath(path)
    if real in visited or not os.path.isfile(path):
      continue
    visited.add(real)
    in_repo = _within(path, repo_dir)
    with open(path, encoding="utf-8") as f:
      try:
        parsed = statements(f)
      except SyntaxError:
        continue  # gin has already named the malformed file.
    for statement in parsed:
      if isinstance(statement, config_parser.IncludeStatement):
        included = _resolve_include(statement.filename)
        if included:
          todo.append(included)
      elif isinstance(statement, config_parser.BindingStatement):
        key, is_macro = binding_key(statement)
        if is_macro and in_repo:
          repo.add(key)
        elif is_macro:
          user.setdefault(key, path)
  return user, repo


def _macro_name(value: Any) -> Optional[str]:
  """``"ADAPTER_SIZE"`` for gin's reference ``%ADAPTER_SIZE``, else None."""
  if (isinstance(value, gin.config.ConfigurableReference)
      and value.configurable.selector == _MACRO):
    return "/".join(value.scopes)
  return None


def _config() -> dict[tuple[str, str], dict[str, Any]]:
  return gin.config._CONFIG  # pylint: disable=protected-access


def bound_macros() -> dict[str, Any]:
  """``{macro: value}`` of the parsed configuration (references unresolved)."""
  return {scope: params.get("value") for (scope, selector), params in
          _config().items() if selector == _MACRO}


def referenced_macros() -> set[str]:
  """Macros that configurable bindings read, directly or through other macros."""
  values = bound_macros()
  todo = [params for (_, selector), params in _config().items()
          if selector not in (_MACRO, _CONSTANT)]
  seen: set[str] = set()
  while todo:
    for ref in gin.config.iterate_references(todo.pop()):
      name = _macro_name(ref)
      if name is not None and name not in seen:
        seen.add(name)
        if name in values:
          todo.append([values[name]])
  return seen


def _is_read(name: str, read: set[str]) -> bool:
  # A scoped macro ``scope/NAME`` serves ``%NAME`` read inside that scope.
  return name in read or name.rsplit("/", 1)[-1] in read


def suggestions(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
  """The closest candidate names (case-insensitive), best first: those about as
  close as the best one (``ADAPTR_SIZE`` -> ``ADAPTER_SIZE`` only, not
  ``BATCH_SIZE``)."""
  by_upper: dict[str, str] = {}
  for c in sorted(candidates):
    by_upper.setdefault(c.upper(), c)
  target = name.upper()
  scored = sorted(((difflib.SequenceMatcher(None, target, c).ratio(), c)
                   for c in by_upper), key=lambda sc: (-sc[0], sc[1]))
  scored = [(s, c) for s, c in scored if s >= 0.6]
  if not scored:
    return []
  best = scored[0][0]
  return [by_upper[c] for s, c in scored[:n] if s >= best - 0.1]


def unread_message(name: str, read: set[str]) -> str:
  """``"NAME: no configuration reads this macro; did you mean X?"``."""
  known = [m for m in bound_macros() if m in read]
  close = suggestions(name, known)
  if not close:
    return f"{name}: no configuration reads this macro"
  listed = (close[0] if len(close) == 1
            else ", ".join(close[:-1]) + " or " + close[-1])
  return f"{name}: no configuration reads this macro; did you mean {listed}?"


def check_user_macros(gin_files: Sequence[str], bindings: Sequence[str],
                      repo_dir: Optional[str] = None) -> None:
  """Raises for user-bound macros that nothing reads (see the module docstring).

  Call after parsing, before ``gin.finalize``.

  Args:
    gin_files: the stacked files as parsed (resolved paths).
    bindings: the command-line binding texts.
    repo_dir: the repository's ``gin/`` directory (default: found next to the
      package).

  Raises:
    GinConfigError: a command-line key bound twice with different values.
    UnreadMacroError: naming every unread macro, with suggestions and where it was
      bound.
  """
  cmd = command_line_macros(bindings)
  user_files, repo = file_macros(
      gin_files, repo_dir if repo_dir is not None else gin_paths.repo_gin_dir())
  origins = {name: f"bound in {path}" for name, path in user_files.items()
             if name not in repo}
  origins.update({name: f"bound by {text!r}" for name, text in cmd.items()})
  if not origins:
    return
  read = referenced_macros()
  problems = {}
  for name in sorted(origins):
    if _is_read(name, read):
      continue
    if name in ENV_FORWARDED_MACROS and os.environ.get(name):
      continue  # The job scripts forward it from the environment to every job.
    problems[name] = unread_message(name, read)
  if problems:
    lines = [f"{msg} ({origins[name]})" for name, msg in problems.items()]
    raise UnreadMacroError(problems, "\n".join(lines))


def _resolve(value: Any, macros: Mapping[str, Any], stack: tuple[str, ...] = ()
             ) -> Any:
  """``value`` with macro references replaced by their (resolved) values; other
  references become their text (``"@TrainEval()"``)."""
  name = _macro_name(value)
  if name is not None:
    key = name if name in macros else name.rsplit("/", 1)[-1]
    if key in macros and key not in stack:
      return _resolve(macros[key], macros, stack + (key,))
    return repr(value)
  if isinstance(value, (gin.config.ConfigurableReference, Ref)):
    return repr(value)
  if isinstance(value, Mapping):
    return {k: _resolve(v, macros, stack) for k, v in value.items()}
  if isinstance(value, list):
    return [_resolve(v, macros, stack) for v in value]
  if isinstance(value, tuple) and not hasattr(value, "_fields"):
    return tuple(_resolve(v, macros, stack) for v in value)
  return value


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
  if (isinstance(value, Mapping) and value
      and all(isinstance(k, str) for k in value)):
    for k, v in value.items():
      _flatten(f"{prefix}.{k}", v, out)
  else:
    out[prefix] = value


def resolved_parameters() -> dict[str, Any]:
  """Every configurable parameter of the parsed configuration, macros substituted.

  Keys are readable (gin's shortest unambiguous selector, then the parameter; keys
  of dict values with string keys are flattened into the name):
  ``{"make_peft_spec.adapter_size": 8, "make_model.hypernet_kwargs.mlp_dim": 16,
  "train.evaluation": "@TrainEval()", ...}``, sorted by key.
  """
  macros = bound_macros()
  registry = gin.config._REGISTRY  # pylint: disable=protected-access
  out: dict[str, Any] = {}
  for (scope, selector), params in _config().items():
    if selector in (_MACRO, _CONSTANT):
      continue
    try:
      short = registry.minimal_selector(selector)
    except KeyError:
      short = selector
    prefix = f"{scope}/{short}" if scope else short
    for arg, value in params.items():
      _flatten(f"{prefix}.{arg}", _resolve(value, macros), out)
  return dict(sorted(out.items()))


def differences(base: Mapping[str, Any], other: Mapping[str, Any]
                ) -> dict[str, Any]:
  """``other``'s values that differ from (or are absent in) ``base``; a key only
  ``base`` has maps to None."""
  keys = list(other) + [k for k in base if k not in other]
  missing = object()
  return {k: other.get(k) for k in sorted(keys)
          if base.get(k, missing) != other.get(k, missing)}
