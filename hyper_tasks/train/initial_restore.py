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

The checkpoint is read once, whatever its format (``checkpoint_formats.py``), and
its optimizer statistics go through the one filler of ``opt_state_restore.py``
(group by group and parameter by parameter, after the same ``assignment_map``;
re-initialised parameters keep fresh statistics). HF checkpoints hold no optimizer
state (groups then start fresh, said in the report).

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
from collections.abc import Sequence
from typing import Any, Optional, Union

import gin
import jax
import numpy as np

from hyper_tasks import tree_utils
from hyper_tasks.convert import lazy
from hyper_tasks.train import checkpoint_formats
from hyper_tasks.train import checkpoints
from hyper_tasks.train import opt_state_restore
from hyper_tasks.train import optimizers
from hyper_tasks.train import param_restore
from hyper_tasks.train.train_state import StateLayout, TrainState

# (checkpoint prefix, target prefix) of InitialRestore.hypernet_encoder_from_backbone.
HYPERNET_ENCODER_COPY = ("encoder/", "hypernet/encoder/")
OPTIMIZER_STATE_MODES = ("fresh", "restore_pretrained", "full_restore")
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
      keys (``param_restore.apply_assignment_map``).
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

  def restore_params(self, target: Any, ckpt_params: Any, init_params: Any
                     ) -> tuple[dict[str, Any], param_restore.RestoreReport]:
    """``param_restore.restore_params`` with this config's renames, fallback,
    re-initialisation and encoder copy (flat ``{path: array}`` dicts)."""
    copies = ((HYPERNET_ENCODER_COPY,) if self.hypernet_encoder_from_backbone
              else ())
    return param_restore.restore_params(
        target, ckpt_params, self.assignment_map, self.fallback_to_scratch,
        init_params, self.reinit_patterns, copies)

  def __post_init__(self):
    if self.format not in checkpoint_formats.FORMAT_NAMES:
      raise ValueError(f"InitialRestore.format={self.format!r}; choose from "
                       f"{checkpoint_formats.FORMAT_NAMES}.")
    if self.optimizer_state not in OPTIMIZER_STATE_MODES:
      raise ValueError(f"InitialRestore.optimizer_state={self.optimizer_state!r}; "
                       f"choose from {OPTIMIZER_STATE_MODES}.")


def load_params(path: str, abstract_params: Any, fmt: str = "auto",
                step: Optional[int] = None, assignment_map=(),
                shardings: Any = None) -> tuple[Any, Optional[int]]:
  """Parameters for evaluation/inference: every key must be in the checkpoint.

  Args:
    path: checkpoint (any format, see :class:`InitialRestore`).
    abstract_params: the model's parameter tree of shapes (decides keys/dtypes).
    fmt, step, assignment_map: as for :class:`InitialRestore`.
    shardings: optional tree of shardings (like ``abstract_params``): each
      parameter is placed as it is read (HF tensors are read one at a time).

  Returns:
    ``(params tree of numpy arrays, or placed arrays with shardings; checkpoint
    step or None)``.
  """
  ckpt = checkpoint_formats.read_checkpoint(path, fmt, step)
  return (params_from_checkpoint(ckpt, abstract_params, assignment_map, shardings),
          ckpt.step)


def params_from_checkpoint(ckpt: checkpoint_formats.CheckpointContents,
                           abstract_params: Any, assignment_map=(),
                           shardings: Any = None) -> Any:
  """:func:`load_params` on a checkpoint already read: every key of
  ``abstract_params`` from ``ckpt`` (renamed by ``assignment_map``)."""
  flat, report = param_restore.restore_params(
      tree_utils.leaves_by_path(abstract_params), ckpt.params, assignment_map)
  if report.unused:
    logging.info("load_params: %d unused checkpoint keys (e.g. %s).",
                 len(report.unused), report.unused[:3])
  params = tree_utils.unflatten_like(abstract_params, flat)
  if shardings is None:
    return jax.tree.map(lazy.materialize, params)
  return place_as_read(params, shardings)


def place_as_read(params: Any, shardings: Any) -> Any:
  """``device_put`` each leaf with its sharding, reading lazy checkpoint tensors
  one at a time (each host copy is dropped once placed)."""
  return jax.tree.map(lambda x, s: jax.device_put(lazy.materialize(x), s),
                      params, shardings)


@dataclasses.dataclass
class FreshInit:
  """A new run's fresh state, made only where a restore needs it.

  Instead of a full random initialisation that the checkpoint then overwrites:
  ``params(keys)`` initialises just the re-initialised parameters (the run's
  jitted init with only those outputs kept; the same values the full
  initialisation gives them), and ``state(params)`` builds the rest around the
  restored parameters (optimizer state from the optimizer's ``init``, step 0,
  the dropout key), placed by ``layout``.

  Attributes:
    init: the run's jitted ``init(key) -> TrainState``.
    key: its key (``PRNGKey(seed)``).
    optimizer: the run's grouped optimizer.
    layout: the run's state layout.
  """
  init: Any
  key: Any
  optimizer: optimizers.GroupedOptimizer
  layout: StateLayout

  def params(self, keys: Sequence[str]) -> dict[str, Any]:
    """``{path: placed array}`` of freshly initialised parameters."""
    keys = sorted(keys)
    if not keys:
      return {}
    shardings = tree_utils.leaves_by_path(self.layout.shardings.params)

    def some(key):
      flat = tree_utils.leaves_by_path(self.init(key).params)
      return {k: flat[k] for k in keys}
    return jax.jit(some, out_shardings={k: shardings[k] for k in keys})(self.key)

  def state(self, params: Any) -> TrainState:
    """The fresh state around ``params`` (placed)."""
    sh = self.layout.shardings
    opt_state = jax.jit(self.optimizer.init, out_shardings=sh.opt_state)(params)
    _, dropout_key = jax.random.split(self.key)
    return TrainState(step=jax.device_put(np.zeros((), np.int32), sh.step),
                      params=params, opt_state=opt_state,
                      rng=jax.device_put(dropout_key, sh.rng))


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
                   ) -> Optional[tuple[TrainState, param_restore.RestoreReport, list[str]]]:
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
  fmt = checkpoint_formats.resolve_format(cfg.path, cfg.format)
  if (fmt != "ours" or cfg.optimizer_state != "full_restore" or cfg.assignment_map
      or cfg.reinit_patterns or cfg.hypernet_encoder_from_backbone):
    return None
  ckpt, step = checkpoint_formats.our_checkpointer(cfg.path, cfg.step)
  with ckpt:
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
  report = param_restore.RestoreReport(loaded=sorted(keys))
  groups = groups_to_restore(cfg, optimizer)
  notes = [f"initial restore: {fmt} checkpoint {cfg.path} (step {step}), read "
           "directly onto the mesh",
           f"optimizer groups {groups}: restored"]
  return state, report, notes


def restore_initial(cfg: InitialRestore, optimizer: optimizers.GroupedOptimizer,
                    layout: StateLayout, fresh: Union[TrainState, FreshInit]
                    ) -> tuple[TrainState, param_restore.RestoreReport, list[str]]:
  """The state a new run starts from.

  Args:
    cfg: what to restore.
    optimizer: the run's grouped optimizer.
    layout: the run's state layout (shapes and shardings).
    fresh: the source of re-initialised parameters and of fresh optimizer
      groups: a :class:`FreshInit` (the trainer's: no full initialisation, only
      the re-initialised parameters are made) or a freshly initialised state.

  Returns:
    ``(state, report, notes)``; notes say what happened to each optimizer group.
  """
  ckpt = checkpoint_formats.read_checkpoint(cfg.path, cfg.format, cfg.step)
  notes = [f"initial restore: {ckpt.format} checkpoint {cfg.path}"]
  targets = tree_utils.leaves_by_path(layout.abstract.params)
  lazy_fresh = isinstance(fresh, FreshInit)
  # With FreshInit, re-initialised keys first get their abstract shapes as
  # placeholders; then only those are initialised.
  flat_params, report = cfg.restore_params(
      targets, ckpt.params,
      targets if lazy_fresh else tree_utils.leaves_by_path(fresh.params))
  if lazy_fresh:
    flat_params.update(fresh.params(report.reinitialised))
  if report.copied:
    notes.append(f"hypernet/encoder: {len(report.copied)} parameters from the "
                 "checkpoint's encoder/ (hypernet_encoder_from_backbone)")
  params = place_as_read(tree_utils.unflatten_like(layout.abstract.params,
                                                   flat_params),
                         layout.shardings.params)
  if lazy_fresh:
    fresh = fresh.state(params)

  groups = groups_to_restore(cfg, optimizer)
  opt_state = fresh.opt_state
  if groups and ckpt.opt_source is None:
    notes.append(f"optimizer groups {groups}: fresh ({ckpt.format.upper()} "
                 "checkpoints hold no optimizer state)")
  elif groups:
    # Copied parameters keep fresh statistics, as re-initialised ones do.
    opt_state = opt_state_restore.fill_group_states(
        opt_state, ckpt.opt_source, groups, assignment_map=cfg.assignment_map,
        keep_fresh=set(report.reinitialised) | set(report.copied),
        require_all=ckpt.format == "t5x" and not cfg.fallback_to_scratch)
    counts = optimizers.group_counts(opt_state)
    notes.extend(f"optimizer group {g!r}: restored from the {ckpt.format} "
                 f"checkpoint (count {int(counts[g])})" for g in groups)
  for g in _trainable_groups(optimizer):
    if g not in groups:
      notes.append(f"optimizer group {g!r}: fresh")
  state = fresh.replace(params=params, opt_state=opt_state)
  return state, report, notes


def save_report(model_dir: str, report: param_restore.RestoreReport,
                notes: Sequence[str]) -> str:
  """Writes the report as JSON to ``MODEL_DIR/restore_report.json``."""
  path = os.path.join(model_dir, REPORT_FILE)
  data = dict(dataclasses.asdict(report), notes=list(notes))
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2)
  logging.info("Restore report written to %s", path)
  return path


def format_report(report: param_restore.RestoreReport, notes: Sequence[str]) -> str:
  return "\n".join(list(notes) + [report.summary()])
