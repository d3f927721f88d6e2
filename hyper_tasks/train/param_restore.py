"""Explicit, reported restore of parameters from a checkpoint's flat dict.

Every restore goes through one function, :func:`restore_params`, over flat
``{'encoder/layers_0/mlp/wi_0/kernel': array}`` dicts, so what happened to each key is
decided in one place and reported (:class:`RestoreReport`):

1. The checkpoint's keys are renamed by an ordered ``assignment_map`` of
   ``(regex, replacement)`` pairs (:func:`apply_assignment_map`): the first regex
   that *fully* matches a checkpoint key decides; the key becomes
   ``match.expand(replacement)`` (``\\1``-style backreferences allowed), or is dropped
   when the replacement is None; keys no rule matches keep their name. As in t5x the
   regexes are anchored (``re.fullmatch``). Unlike t5x, whose map is keyed by the
   *target* name and names the checkpoint key to read, this map renames *checkpoint*
   keys; a replacement may be a sequence of names to copy one checkpoint array to
   several targets (e.g. the backbone encoder into ``hypernet/encoder/``).
   ``prefix_copies`` then offer the renamed checkpoint's keys under one prefix
   again under another (e.g. ``encoder/`` as ``hypernet/encoder/``: HINT's
   separate instruction encoder starts as the pretrained T5 encoder); a copied
   key replaces any checkpoint key of its name and is loaded even when it matches
   ``reinit_patterns``.
2. Each target key is then loaded from the (renamed) checkpoint, or re-initialised
   from ``init_params`` when it matches one of ``reinit_patterns`` (even if the
   checkpoint has it: e.g. a fresh hypernetwork) or, with ``fallback_to_scratch``,
   when the checkpoint lacks it. A missing key otherwise is an error that lists
   every missing key; a shape mismatch is an error that lists every mismatched key
   with both shapes. Loaded arrays are cast to the target dtype.
3. Checkpoint keys that no target used are reported as ``unused``.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np

from hyper_tasks import tree_utils
from hyper_tasks.models import scan_params

Replacement = Union[None, str, Sequence[str]]
AssignmentMap = Sequence[tuple[str, Replacement]]

_SUMMARY_NAMES = 5


class RestoreError(ValueError):
  """The checkpoint does not fit the target parameters."""


@dataclasses.dataclass
class RestoreReport:
  """What :func:`restore_params` did with each key (sorted lists of names)."""
  loaded: list[str] = dataclasses.field(default_factory=list)
  reinitialised: list[str] = dataclasses.field(default_factory=list)
  unused: list[str] = dataclasses.field(default_factory=list)
  dropped: list[str] = dataclasses.field(default_factory=list)  # by assignment_map
  renamed: dict[str, str] = dataclasses.field(default_factory=dict)  # ckpt -> target
  copied: dict[str, str] = dataclasses.field(default_factory=dict)  # target -> ckpt

  def summary(self, max_names: int = _SUMMARY_NAMES) -> str:
    """Counts plus the first few names of each category, one line each."""
    def line(label, names):
      shown = ", ".join(names[:max_names])
      more = f", ... (+{len(names) - max_names})" if len(names) > max_names else ""
      return f"{label}: {len(names)}" + (f" [{shown}{more}]" if names else "")
    return "\n".join([
        line("loaded", self.loaded),
        line("reinitialised", self.reinitialised),
        line("unused checkpoint keys", self.unused),
        line("dropped by assignment_map", self.dropped),
    ] + ([line("copied (prefix_copies)", sorted(self.copied))] if self.copied
         else []))


def _as_flat(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Accepts flat or nested dicts (a nested one is flattened)."""
  if any(isinstance(v, Mapping) for v in tree.values()):
    return tree_utils.flatten(tree)
  return dict(tree)


def _rename_targets(key: str, assignment_map: AssignmentMap
                    ) -> tuple[Optional[tuple[str, ...]], bool]:
  """New names of one checkpoint key: (names or None if dropped, matched?)."""
  for pattern, repl in assignment_map:
    m = re.fullmatch(pattern, key)
    if m is None:
      continue
    if repl is None:
      return None, True
    repls = (repl,) if isinstance(repl, str) else tuple(repl)
    return tuple(m.expand(r) for r in repls), True
  return (key,), False


def apply_assignment_map(flat_ckpt: Mapping[str, Any],
                         assignment_map: AssignmentMap = (),
                         report: Optional[RestoreReport] = None) -> dict[str, Any]:
  """Renames (or drops) checkpoint keys by the first fully matching regex.

  Args:
    flat_ckpt: ``{checkpoint key: array}``.
    assignment_map: ordered ``(regex, replacement)``; replacement is a template for
      ``re.Match.expand`` (``\\1``, ``\\g<name>``), a sequence of templates (copy to
      several names), or None (drop the key).
    report: optional report that records dropped keys and renames.

  Returns:
    ``{new key: array}``.

  Raises:
    RestoreError: two checkpoint keys end up with the same name.
  """
  for pattern, _ in assignment_map:
    re.compile(pattern)  # Fail on a bad regex even if no key reaches it.
  out: dict[str, Any] = {}
  source: dict[str, str] = {}
  collisions = []
  for key, value in flat_ckpt.items():
    names, matched = _rename_targets(key, assignment_map)
    if names is None:
      if report is not None:
        report.dropped.append(key)
      continue
    for name in names:
      if name in out:
        collisions.append(f"{source[name]!r} and {key!r} -> {name!r}")
        continue
      out[name] = value
      source[name] = key
      if matched and name != key and report is not None:
        report.renamed[key] = name if len(names) == 1 else ", ".join(names)
  if collisions:
    raise RestoreError("assignment_map maps several checkpoint keys to one name: "
                       + "; ".join(collisions))
  return out


def _shape_dtype(x) -> tuple[tuple[int, ...], np.dtype]:
  return tuple(np.shape(x)), np.dtype(x.dtype)


def _copy_prefixes(ckpt: Mapping[str, Any], targets: Mapping[str, Any],
                   prefix_copies: Sequence[tuple[str, str]]) -> dict[str, str]:
  """``{target key: checkpoint key}`` of the copies ``prefix_copies`` make."""
  out: dict[str, str] = {}
  for src, dst in prefix_copies:
    for key in ckpt:
      if key.startswith(src) and dst + key[len(src):] in targets:
        out[dst + key[len(src):]] = key
  return out


def restore_params(target_shapes: Mapping[str, Any],
                   flat_ckpt: Mapping[str, Any],
                   assignment_map: AssignmentMap = (),
                   fallback_to_scratch: bool = False,
                   init_params: Optional[Mapping[str, Any]] = None,
                   reinit_patterns: Iterable[str] = (),
                   prefix_copies: Sequence[tuple[str, str]] = ()
                   ) -> tuple[dict[str, Any], RestoreReport]:
  """Builds the target's flat parameters from a checkpoint (see module docstring).

  Args:
    target_shapes: ``{path: jax.ShapeDtypeStruct or array}`` (flat or nested) of
      the model being restored; decides the keys, shapes and dtypes of the result.
    flat_ckpt: ``{checkpoint key: array}`` (flat or nested).
    assignment_map: ordered checkpoint-key renames, see :func:`apply_assignment_map`.
    fallback_to_scratch: take keys the checkpoint lacks from ``init_params``.
    init_params: freshly initialised parameters (flat or nested), the source of
      every re-initialised key.
    reinit_patterns: regexes (``re.search``) of target keys always taken from
      ``init_params``, whether or not the checkpoint has them.
    prefix_copies: ``(source prefix, target prefix)`` pairs: after renaming, every
      checkpoint key ``source + rest`` is also offered as ``target + rest`` (for
      the target keys that exist), replacing a checkpoint key of that name and
      overriding ``reinit_patterns``; recorded in ``report.copied``.

  Returns:
    ``(flat params, report)``; loaded values are cast to the target dtype.

  Raises:
    RestoreError: missing keys (all listed), shape mismatches (all listed with both
      shapes), or re-initialisation needed without ``init_params``.
  """
  targets = _as_flat(target_shapes)
  report = RestoreReport()
  ckpt = apply_assignment_map(_as_flat(flat_ckpt), assignment_map, report)
  # A scanned model (T5Config.scan_layers) from per-layer checkpoints, and back.
  ckpt = scan_params.adapt_to_targets(ckpt, targets)
  init = _as_flat(init_params) if init_params is not None else None
  reinit_res = [re.compile(p) for p in reinit_patterns]
  copied = _copy_prefixes(ckpt, targets, prefix_copies)
  ckpt.update({k: ckpt[src] for k, src in copied.items()})
  report.copied = dict(sorted(copied.items()))

  def wants_reinit(key):
    return key not in copied and any(r.search(key) for r in reinit_res)

  out: dict[str, Any] = {}
  missing, mismatched, no_init = [], [], []
  used = set()
  for key, target in targets.items():
    shape, dtype = _shape_dtype(target)
    if wants_reinit(key) or (key not in ckpt and fallback_to_scratch):
      if init is None or key not in init:
        no_init.append(key)
        continue
      value = init[key]
      if tuple(np.shape(value)) != shape:
        mismatched.append(f"{key}: init {tuple(np.shape(value))} vs target {shape}")
        continue
      out[key] = value.astype(dtype) if value.dtype != dtype else value
      report.reinitialised.append(key)
      continue
    if key not in ckpt:
      missing.append(key)
      continue
    used.add(key)
    value = ckpt[key]
    if tuple(np.shape(value)) != shape:
      mismatched.append(f"{key}: checkpoint {tuple(np.shape(value))} vs target {shape}")
      continue
    out[key] = value.astype(dtype) if np.dtype(value.dtype) != dtype else value
    report.loaded.append(key)

  problems = []
  if missing:
    problems.append(f"{len(missing)} target key(s) missing from the checkpoint (set "
                    f"fallback_to_scratch or reinit_patterns to initialise them): "
                    f"{sorted(missing)}")
  if mismatched:
    problems.append(f"{len(mismatched)} shape mismatch(es): {sorted(mismatched)}")
  if no_init:
    problems.append(f"{len(no_init)} key(s) to re-initialise but absent from "
                    f"init_params: {sorted(no_init)}")
  if problems:
    raise RestoreError("Cannot restore parameters:\n" + "\n".join(problems))

  # A checkpoint key that was only copied was used through its copy.
  used |= {copied[k] for k in used if k in copied}
  report.unused = sorted(set(ckpt) - used - set(copied))
  report.loaded.sort()
  report.reinitialised.sort()
  report.dropped.sort()
  return out, report
