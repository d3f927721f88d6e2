"""Initial restore: a new run's starting point from an HF, t5x or our own checkpoint.

Restore precedence in the trainer (MaxText's, written down):

  1. resume: the latest checkpoint in ``MODEL_DIR/checkpoints`` (everything,
     including the input position); this module is not involved;
  2. initial restore (:class:`InitialRestore`): parameters (and optionally optimizer
     state) from another checkpoint, renamed by an ``assignment_map``, with missing
     keys from scratch when ``fallback_to_scratch``; reported;
  3. scratch.

Optimizer state, per group (HINT's rules; gin: ``gin/restore/*.gin``):

* ``"fresh"``: every group starts fresh.
* ``"restore_pretrained"``: groups not in ``fresh_groups`` (by default everything
  but ``hypernet``) take their Adafactor statistics and step counter from the
  checkpoint; the hypernetwork's start fresh (its own counter at 0, so its
  schedule and second-moment decay start over; ``step_offset`` applies on top).
* ``"full_restore"``: every group from the checkpoint.

HF checkpoints hold no optimizer state (groups then start fresh, said in the report).
t5x checkpoints map through ``convert.t5x_checkpoint.adafactor_state_from_t5x``. Our
checkpoints map group by group and parameter by parameter (after the same
``assignment_map``); re-initialised parameters keep fresh statistics.

A separate instruction encoder (``hypernet/encoder/``, ``HYPER_SEPARATE_ENCODER``)
starts as the checkpoint's backbone encoder when ``hypernet_encoder_from_backbone``
(HINT's ``separate_henc.gin``; on in ``gin/restore/restore_pretrained.gin``): its
parameters are copied from ``encoder/*`` (whatever the checkpoint holds under
``hypernet/encoder/`` and despite ``reinit_patterns``), and their optimizer
statistics start fresh.

The global step of the new run starts at 0: ``num_steps`` counts this run's steps.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Sequence
from typing import Any, Optional

import gin
import jax
import numpy as np

from hyper_tasks.train import checkpoints
from hyper_tasks.train import optimizers
from hyper_tasks.train import restore
from hyper_tasks import tree_utils
from hyper_tasks.train.train_state import StateLayout, TrainState

FORMATS = ("auto", "hf", "ours", "t5x")
# (checkpoint prefix, target prefix) of InitialRestore.hypernet_encoder_from_backbone.
HYPERNET_ENCODER_COPY = ("encoder/", "hypernet/encoder/")
OPTIMIZER_STATE_MODES = ("fresh", "restore_pretrained", "full_restore")
_FIELDS = ("v_row", "v_col", "v", "m")
REPORT_FILE = "restore_report.json"


@gin.configurable(module="hyper_tasks.train")
@dataclasses.dataclass(frozen=True)
class InitialRestore:
  """Where a new run starts from (ignored when ``MODEL_DIR`` has a checkpoint).

  Attributes:
    path: HF model directory (``config.json`` + weights), one of our ``MODEL_DIR``s
      (or its ``checkpoints/`` or ``checkpoints/<step>`` directory), or a t5x
      checkpoint (file, ``checkpoint_<step>`` dir or model dir).
    format: ``auto`` (detected from the files), ``hf``, ``ours`` or ``t5x``.
    step: checkpoint step (ours, t5x); default the latest.
    assignment_map: ordered ``(regex, replacement or None)`` renames of checkpoint
      keys (``restore.apply_assignment_map``).
    fallback_to_scratch: parameters the checkpoint lacks start from scratch.
    reinit_patterns: regexes of parameters always started from scratch.
    optimizer_state: ``fresh``, ``restore_pretrained`` or ``full_restore``.
    fresh_groups: groups kept fresh by ``restore_pretrained``.
    hypernet_encoder_from_backbone: a separate instruction encoder
      (``hypernet/encoder/``) starts as the checkpoint's ``encoder/`` (HINT's
      ``separate_henc``); no effect on a model without one.
  """
  path: str
  format: str = "auto"
  step: Optional[int] = None
  assignment_map: Sequence[tuple[str, Any]] = ()
  fallback_to_scratch: bool = False
  reinit_patterns: Sequence[str] = ()
  optimizer_state: str = "fresh"
  fresh_groups: Sequence[str] = ("hypernet",)
  hypernet_encoder_from_backbone: bool = False

  def __post_init__(self):
    if self.format not in FORMATS:
      raise ValueError(f"InitialRestore.format={self.format!r}; choose from "
                       f"{FORMATS}.")
    if self.optimizer_state not in OPTIMIZER_STATE_MODES:
      raise ValueError(f"InitialRestore.optimizer_state={self.optimizer_state!r}; "
                       f"choose from {OPTIMIZER_STATE_MODES}.")


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


def _our_checkpointer(path: str, step: Optional[int]):
  """(Checkpointer, step) for a MODEL_DIR, its checkpoints/ or a step directory."""
  path = os.path.abspath(path)
  base = os.path.basename(path)
  if base.isdigit() and os.path.basename(os.path.dirname(path)) == \
      checkpoints.CHECKPOINTS_SUBDIR:
    step = int(base) if step is None else step
    path = os.path.dirname(path)
    base = checkpoints.CHECKPOINTS_SUBDIR
  if base == checkpoints.CHECKPOINTS_SUBDIR:
    path = os.path.dirname(path)
  return checkpoints.Checkpointer(path, async_save=False), step


def _flat(tree) -> dict[str, Any]:
  return {tree_utils.path_str(p): v for p, v in
          jax.tree_util.tree_leaves_with_path(tree) if v is not None}


def _source_group_states(flat_opt: dict[str, Any]) -> dict[str, dict]:
  """``{group: {"count": x, field: {param path: array}}}`` from a flat saved state."""
  out: dict[str, dict] = {}
  for key, value in flat_opt.items():
    parts = key.split("/")
    if "inner_states" not in parts:
      continue
    i = parts.index("inner_states")
    group, rest = parts[i + 1], parts[i + 2:]
    if rest and rest[0] == "inner_state":
      rest = rest[1:]
    if not rest:
      continue
    entry = out.setdefault(group, {f: {} for f in _FIELDS})
    if rest[0] == "count":
      entry["count"] = value
    elif rest[0] in _FIELDS and len(rest) > 1:
      entry[rest[0]]["/".join(rest[1:])] = value
  return out


def _opt_state_from_ours(fresh_opt, flat_opt, groups, assignment_map,
                         reinitialised: set, notes: list[str]):
  source = _source_group_states(flat_opt)
  missing_groups = sorted(set(groups) - set(source))
  if missing_groups:
    raise restore.RestoreError(
        f"The checkpoint's optimizer state has no group(s) {missing_groups} "
        f"(it has {sorted(source)}); use optimizer_state='fresh' or name them in "
        "fresh_groups.")
  renamed = {g: {f: restore.apply_assignment_map(source[g][f], assignment_map)
                 for f in _FIELDS} for g in groups}
  problems = []

  def fill(name, state):
    if name not in groups:
      return state
    fields = {}
    for field in _FIELDS:
      def one(path, leaf, field=field):
        param = tree_utils.path_str(path)
        value = renamed[name][field].get(param)
        if param in reinitialised or value is None:
          return leaf
        if tuple(np.shape(value)) != tuple(leaf.shape):
          problems.append(f"{name}/{field}/{param}: checkpoint {np.shape(value)} vs "
                          f"{tuple(leaf.shape)}")
          return leaf
        return jax.device_put(np.asarray(value, leaf.dtype), leaf.sharding)
      fields[field] = jax.tree_util.tree_map_with_path(one, getattr(state, field))
    count = jax.device_put(np.asarray(source[name]["count"], state.count.dtype),
                           state.count.sharding)
    notes.append(f"optimizer group {name!r}: restored (count {int(count)})")
    return state._replace(count=count, **fields)

  out = optimizers.map_group_states(fresh_opt, fill)
  if problems:
    raise restore.RestoreError("Optimizer state does not fit: " + "; ".join(problems))
  return out


def read_checkpoint(path: str, fmt: str = "auto", step: Optional[int] = None
                    ) -> tuple[dict, Optional[dict], Optional[dict], Optional[int]]:
  """Reads any supported checkpoint.

  Returns:
    ``(flat params, flat optimizer state (ours) or None, t5x optimizer state or
    None, step or None)``.
  """
  fmt = detect_format(path) if fmt == "auto" else fmt
  if fmt == "hf":
    from hyper_tasks.convert import hf  # pylint: disable=g-import-not-at-top
    _, params = hf.load_t5(path)
    return tree_utils.flatten(params), None, None, None
  if fmt == "t5x":
    from hyper_tasks.convert import t5x_checkpoint  # pylint: disable=g-import-not-at-top
    params, opt, ckpt_step = t5x_checkpoint.load_t5x_checkpoint(path, step)
    return params, None, opt, ckpt_step
  ckpt, step = _our_checkpointer(path, step)
  with ckpt:
    step = ckpt.latest_step() if step is None else step
    raw, _ = ckpt.restore(step)
  return _flat(raw["params"]), _flat(raw.get("opt_state", {})), None, step


def load_params(path: str, abstract_params: Any, fmt: str = "auto",
                step: Optional[int] = None, assignment_map=()
                ) -> tuple[Any, Optional[int]]:
  """Parameters for evaluation/inference: every key must be in the checkpoint.

  Args:
    path: checkpoint (any format, see :class:`InitialRestore`).
    abstract_params: the model's parameter tree of shapes (decides keys/dtypes).
    fmt, step, assignment_map: as for :class:`InitialRestore`.

  Returns:
    ``(params tree of numpy arrays, checkpoint step or None)``.
  """
  flat_ckpt, _, _, ckpt_step = read_checkpoint(path, fmt, step)
  flat, report = restore.restore_params(_flat(abstract_params), flat_ckpt,
                                        assignment_map)
  if report.unused:
    logging.info("load_params: %d unused checkpoint keys (e.g. %s).",
                 len(report.unused), report.unused[:3])
  treedef = jax.tree.structure(abstract_params)
  paths = tree_utils.leaf_paths(abstract_params)
  return jax.tree.unflatten(treedef, [flat[p] for p in paths]), ckpt_step


def _trainable_groups(optimizer: optimizers.GroupedOptimizer) -> list[str]:
  return [g.name for g in optimizer.groups if not g.frozen]


def groups_to_restore(cfg: InitialRestore,
                      optimizer: optimizers.GroupedOptimizer) -> list[str]:
  """The trainable optimizer groups whose state ``cfg`` takes from the checkpoint."""
  trainable = _trainable_groups(optimizer)
  if cfg.optimizer_state == "fresh":
    return []
  if cfg.optimizer_state == "restore_pretrained":
    return [g for g in trainable if g not in set(cfg.fresh_groups)]
  return trainable


def restore_direct(cfg: InitialRestore, optimizer: optimizers.GroupedOptimizer,
                   layout: StateLayout, seed: int
                   ) -> Optional[tuple[TrainState, restore.RestoreReport, list[str]]]:
  """Stage 2's common case, restored straight into the sharded target.

  When ``cfg`` takes everything as it is (our checkpoint, ``full_restore``, no
  ``assignment_map``, ``reinit_patterns`` or encoder copy) and the checkpoint's
  state tree equals this run's (keys and shapes, from orbax metadata), every
  parameter and optimizer statistic is read by orbax directly onto its shards: no
  random initialisation of the model and no unsharded host copy of the state (the
  general path, :func:`restore_initial`, needs both). The result equals the
  general path's (step 0, the dropout key of ``PRNGKey(seed)``).

  Returns:
    ``(state, report, notes)``, or None where the general path is needed.
  """
  fmt = detect_format(cfg.path) if cfg.format == "auto" else cfg.format
  if (fmt != "ours" or cfg.optimizer_state != "full_restore" or cfg.assignment_map
      or cfg.reinit_patterns or cfg.hypernet_encoder_from_backbone):
    return None
  ckpt, step = _our_checkpointer(cfg.path, cfg.step)
  with ckpt:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      return None
    try:
      checkpoints.check_matches(ckpt.saved_tree(step), layout.abstract)
    except checkpoints.CheckpointMismatchError:
      return None
    state, _ = ckpt.restore(step, target=layout.abstract)
  _, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
  state = state.replace(
      step=jax.device_put(np.zeros((), np.int32), layout.shardings.step),
      rng=jax.device_put(dropout_key, layout.shardings.rng))
  keys = tree_utils.leaf_paths(layout.abstract.params)
  report = restore.RestoreReport(loaded=sorted(keys))
  groups = groups_to_restore(cfg, optimizer)
  notes = [f"initial restore: {fmt} checkpoint {cfg.path} (step {step}), read "
           "directly onto the mesh",
           f"optimizer groups {groups}: restored"]
  return state, report, notes


def restore_initial(cfg: InitialRestore, optimizer: optimizers.GroupedOptimizer,
                    layout: StateLayout, fresh: TrainState
                    ) -> tuple[TrainState, restore.RestoreReport, list[str]]:
  """The state a new run starts from.

  Args:
    cfg: what to restore.
    optimizer: the run's grouped optimizer.
    layout: the run's state layout (shapes and shardings).
    fresh: a freshly initialised state (source of re-initialised parameters and
      of fresh optimizer groups).

  Returns:
    ``(state, report, notes)``; notes say what happened to each optimizer group.
  """
  fmt = detect_format(cfg.path) if cfg.format == "auto" else cfg.format
  notes = [f"initial restore: {fmt} checkpoint {cfg.path}"]
  flat_ckpt, flat_opt, t5x_opt, _ = read_checkpoint(cfg.path, fmt, cfg.step)
  target = _flat(layout.abstract.params)
  init_flat = _flat(fresh.params)
  copies = (HYPERNET_ENCODER_COPY,) if cfg.hypernet_encoder_from_backbone else ()
  flat_params, report = restore.restore_params(
      target, flat_ckpt, cfg.assignment_map, cfg.fallback_to_scratch, init_flat,
      cfg.reinit_patterns, copies)
  if report.copied:
    notes.append(f"hypernet/encoder: {len(report.copied)} parameters from the "
                 "checkpoint's encoder/ (hypernet_encoder_from_backbone)")
  treedef = jax.tree.structure(layout.abstract.params)
  paths = tree_utils.leaf_paths(layout.abstract.params)
  params = jax.tree.unflatten(treedef, [flat_params[p] for p in paths])
  params = jax.tree.map(lambda x, s: jax.device_put(x, s), params,
                        layout.shardings.params)

  trainable = _trainable_groups(optimizer)
  groups = groups_to_restore(cfg, optimizer)
  opt_state = fresh.opt_state
  if groups and fmt == "hf":
    notes.append(f"optimizer groups {groups}: fresh (HF checkpoints hold no "
                 "optimizer state)")
  elif groups and fmt == "t5x":
    from hyper_tasks.convert import t5x_checkpoint  # pylint: disable=g-import-not-at-top
    opt_state = t5x_checkpoint.adafactor_state_from_t5x(
        opt_state, t5x_opt, groups=groups, require_all=not cfg.fallback_to_scratch)
    notes.append(f"optimizer groups {groups}: restored from the t5x checkpoint")
  elif groups:
    # Copied parameters keep fresh statistics, as re-initialised ones do.
    opt_state = _opt_state_from_ours(opt_state, flat_opt, groups, cfg.assignment_map,
                                     set(report.reinitialised) | set(report.copied),
                                     notes)
  for g in trainable:
    if g not in groups:
      notes.append(f"optimizer group {g!r}: fresh")
  state = fresh.replace(params=params, opt_state=opt_state)
  return state, report, notes


def save_report(model_dir: str, report: restore.RestoreReport,
                notes: Sequence[str]) -> str:
  """Writes the report as JSON to ``MODEL_DIR/restore_report.json``."""
  path = os.path.join(model_dir, REPORT_FILE)
  data = dict(dataclasses.asdict(report), notes=list(notes))
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2)
  logging.info("Restore report written to %s", path)
  return path


def format_report(report: restore.RestoreReport, notes: Sequence[str]) -> str:
  return "\n".join(list(notes) + [report.summary()])
