"""The checkpoint formats a run can start from or evaluate, dispatched once.

Three formats, each one small reader (:data:`FORMATS` -> :class:`_Format`):

* ``hf``: an HF T5 directory (``config.json`` + weights; ``convert.hf``); holds no
  optimizer state;
* ``t5x``: a t5x checkpoint (msgpack + tensorstore; ``convert.t5x_checkpoint``),
  Adafactor statistics in t5x's layout;
* ``ours``: one of our ``MODEL_DIR``s (or its ``checkpoints/`` or
  ``checkpoints/<step>`` directory; ``train.checkpoints``).

:func:`read_checkpoint` returns one :class:`CheckpointContents` whatever the
format: the flat parameters, the step and the optimizer statistics as an
``opt_state_restore.StateSource`` (None for HF). :func:`read_shapes` reads the same
from metadata only (``--check``). ``detect_format`` tells the format from the files.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Optional

from hyper_tasks import tree_utils
from hyper_tasks.convert import hf
from hyper_tasks.convert import t5x_checkpoint
from hyper_tasks.train import checkpoints
from hyper_tasks.train import opt_state_restore

FORMAT_NAMES = ("auto", "hf", "ours", "t5x")


@dataclasses.dataclass(frozen=True)
class CheckpointContents:
  """One checkpoint, read.

  Attributes:
    format: ``hf``, ``ours`` or ``t5x``.
    params: ``{parameter path: array}``.
    step: the checkpoint's step, or None (HF, or a t5x state without one).
    opt_source: its optimizer statistics, or None when it holds none (HF).
  """
  format: str
  params: dict[str, Any]
  step: Optional[int]
  opt_source: Optional[opt_state_restore.StateSource]


@dataclasses.dataclass(frozen=True)
class CheckpointShapes:
  """One checkpoint's shapes, from metadata only (no weights read).

  Attributes:
    format: ``hf``, ``ours`` or ``t5x``.
    params: ``{parameter path: shape}``.
    opt_groups: the optimizer groups its state holds; None when one state serves
      every group (t5x) or it holds none (HF: ``has_opt_state`` False).
    has_opt_state: whether it holds optimizer statistics at all.
  """
  format: str
  params: dict[str, tuple[int, ...]]
  opt_groups: Optional[set[str]]
  has_opt_state: bool


def detect_format(path: str) -> str:
  """``hf``, ``ours`` or ``t5x`` from the files at ``path``."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Initial checkpoint {path!r} does not exist.")
  if os.path.isfile(path):
    return "t5x"
  entries = set(os.listdir(path))
  if "config.json" in entries:
    return "hf"
  if "checkpoint" in entries or any(re.match(r"^checkpoint_\d+$", e) for e in entries):
    return "t5x"
  if (checkpoints.CHECKPOINTS_SUBDIR in entries or "state" in entries
      or os.path.basename(os.path.normpath(path)) == checkpoints.CHECKPOINTS_SUBDIR):
    return "ours"
  raise ValueError(f"Cannot tell the checkpoint format of {path!r} (no config.json, "
                   "t5x 'checkpoint' file or orbax 'checkpoints/' directory); set "
                   "InitialRestore.format.")


def resolve_format(path: str, fmt: str = "auto") -> str:
  return detect_format(path) if fmt == "auto" else fmt


def our_checkpointer(path: str, step: Optional[int]
                     ) -> tuple[checkpoints.Checkpointer, Optional[int]]:
  """``(Checkpointer, step)`` for a MODEL_DIR, its checkpoints/ or a step
  directory; the step is the given one, the directory's, or the latest (None when
  there is no finalised checkpoint)."""
  path = os.path.abspath(path)
  base = os.path.basename(path)
  if base.isdigit() and os.path.basename(os.path.dirname(path)) == \
      checkpoints.CHECKPOINTS_SUBDIR:
    step = int(base) if step is None else step
    path = os.path.dirname(path)
    base = checkpoints.CHECKPOINTS_SUBDIR
  if base == checkpoints.CHECKPOINTS_SUBDIR:
    path = os.path.dirname(path)
  ckpt = checkpoints.Checkpointer(path, async_save=False)
  return ckpt, ckpt.latest_step() if step is None else step


# --------------------------------------------------------------------------------------
# One reader per format.
# --------------------------------------------------------------------------------------


def _read_hf(path: str, step: Optional[int]) -> CheckpointContents:
  del step  # HF directories hold one set of weights.
  # Checked from the headers; each tensor is read when the restore places it.
  _, params = hf.lazy_params(path)
  return CheckpointContents("hf", params, None, None)


def _shapes_hf(path: str, step: Optional[int]) -> CheckpointShapes:
  del step
  _, shapes = hf.read_param_shapes(path)
  return CheckpointShapes("hf", shapes, None, False)


def _read_t5x(path: str, step: Optional[int]) -> CheckpointContents:
  params, opt, ckpt_step = t5x_checkpoint.load_t5x_checkpoint(path, step)
  return CheckpointContents("t5x", params, ckpt_step,
                            opt_state_restore.t5x_source(opt))


def _shapes_t5x(path: str, step: Optional[int]) -> CheckpointShapes:
  shapes, _ = t5x_checkpoint.read_param_shapes(path, step)
  return CheckpointShapes("t5x", shapes, None, True)


def _read_ours(path: str, step: Optional[int]) -> CheckpointContents:
  ckpt, step = our_checkpointer(path, step)
  with ckpt:
    raw, _ = ckpt.restore(step)
  return CheckpointContents(
      "ours", tree_utils.leaves_by_path(raw["params"]), step,
      opt_state_restore.ours_source(
          tree_utils.leaves_by_path(raw.get("opt_state", {}))))


def our_saved_shapes(path: str, step: Optional[int]
                     ) -> tuple[int, dict[str, tuple[int, ...]]]:
  """``(step, {state path: shape})`` of one of our checkpoints, from orbax metadata."""
  ckpt, step = our_checkpointer(path, step)
  with ckpt:
    if step is None:
      raise FileNotFoundError(f"No finalised checkpoint under {path}.")
    return step, ckpt.saved_shapes(step)


def _shapes_ours(path: str, step: Optional[int]) -> CheckpointShapes:
  _, saved = our_saved_shapes(path, step)
  params = {k[len("params/"):]: v for k, v in saved.items() if k.startswith("params/")}
  opt = {k[len("opt_state/"):]: v for k, v in saved.items()
         if k.startswith("opt_state/")}
  return CheckpointShapes("ours", params,
                          opt_state_restore.ours_source(opt).groups(), True)


class _Format(NamedTuple):
  read: Callable[[str, Optional[int]], CheckpointContents]
  shapes: Callable[[str, Optional[int]], CheckpointShapes]


FORMATS: Mapping[str, _Format] = {
    "hf": _Format(_read_hf, _shapes_hf),
    "t5x": _Format(_read_t5x, _shapes_t5x),
    "ours": _Format(_read_ours, _shapes_ours),
}


def read_checkpoint(path: str, fmt: str = "auto", step: Optional[int] = None
                    ) -> CheckpointContents:
  """Reads any supported checkpoint (``fmt`` ``auto``: detected from the files)."""
  return FORMATS[resolve_format(path, fmt)].read(path, step)


def read_shapes(path: str, fmt: str = "auto", step: Optional[int] = None
                ) -> CheckpointShapes:
  """A checkpoint's parameter shapes and optimizer groups, from metadata only."""
  return FORMATS[resolve_format(path, fmt)].shapes(path, step)
