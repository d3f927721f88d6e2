"""Train-state checkpoints on orbax: ``MODEL_DIR/checkpoints/<step>/``.

Each step directory holds two orbax items:

* ``state``: the train-state pytree (params, optimizer state, step, rng, ...),
  saved with ``StandardSave`` so every array is written by the hosts that own its
  shards, and restored with ``StandardRestore`` into the *target's* shapes, dtypes and
  shardings (pass ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)`` leaves, or real
  arrays whose sharding is reused), so restored arrays land sharded.
* ``metadata``: JSON with the input-pipeline position (batches consumed, so a resumed
  run skips exactly what it has seen), the step and the gin config.

Atomicity comes from orbax: a step is written under
``<step>.orbax-checkpoint-tmp-<n>`` and renamed when complete (or marked with
``commit_success.txt`` on object stores), and unfinalised directories are never
listed, so a kill mid-save leaves the previous checkpoint as the latest.

Before restoring, the checkpoint's recorded tree is compared with the target and a
mismatch raises :class:`CheckpointMismatchError` naming every missing, unexpected and
mis-shaped key (orbax's own errors do not say which parameter is wrong).

Preemption: :func:`install_preemption_handler` turns SIGTERM into a flag that the
training loop polls with :func:`preemption_requested` to save (``force=True``) and
exit cleanly.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from hyper_tasks import tree_utils

PyTree = Any

CHECKPOINTS_SUBDIR = "checkpoints"
_STATE = "state"
_METADATA = "metadata"
_FORMAT_VERSION = 1


class CheckpointMismatchError(ValueError):
  """The checkpoint's tree does not fit the restore target."""


# --------------------------------------------------------------------------------------
# Typed PRNG keys are stored as their raw uint32 data.
# --------------------------------------------------------------------------------------


def _is_typed_key(x) -> bool:
  return (isinstance(x, (jax.Array, jax.ShapeDtypeStruct))
          and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))


def _to_storable(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x,
                      tree)


def _default_sharding() -> jax.sharding.Sharding:
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _abstract(x) -> Any:
  """Restore target for one leaf: shape, dtype and sharding."""
  if _is_typed_key(x):
    data = jax.eval_shape(jax.random.key_data, x)
    sharding = getattr(x, "sharding", None) or _default_sharding()
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  if isinstance(x, jax.ShapeDtypeStruct):
    if x.sharding is None:
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_default_sharding())
    return x
  return x  # numpy arrays and Python scalars restore as themselves.


def _from_storable(restored: PyTree, target: PyTree) -> PyTree:
  def back(r, t):
    if _is_typed_key(t):
      impl = jax.random.key_impl(t) if isinstance(t, jax.Array) else None
      return jax.random.wrap_key_data(r, impl=impl)
    return r
  return jax.tree.map(back, restored, target)


# --------------------------------------------------------------------------------------
# Target vs checkpoint comparison.
# --------------------------------------------------------------------------------------


def _leaf_shapes(tree: PyTree, is_leaf=None) -> dict[str, tuple[int, ...]]:
  return {tree_utils.path_str(p): tuple(np.shape(x))
          for p, x in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)}


def _is_metadata_leaf(x) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype")


def check_matches(saved_tree: PyTree, target: PyTree) -> None:
  """Raises :class:`CheckpointMismatchError` naming missing/unexpected/mis-shaped keys.

  Args:
    saved_tree: the checkpoint's recorded tree (orbax metadata leaves with
      ``shape``), or any pytree of arrays.
    target: the restore target.
  """
  saved = _leaf_shapes(saved_tree, is_leaf=_is_metadata_leaf)
  wanted = _leaf_shapes(jax.tree.map(_abstract, target))
  missing = sorted(set(wanted) - set(saved))
  unexpected = sorted(set(saved) - set(wanted))
  mismatched = sorted(f"{k}: checkpoint {saved[k]} vs target {wanted[k]}"
                      for k in set(saved) & set(wanted) if saved[k] != wanted[k])
  if missing or unexpected or mismatched:
    parts = []
    if missing:
      parts.append(f"missing from the checkpoint: {missing}")
    if unexpected:
      parts.append(f"in the checkpoint but not in the target: {unexpected}")
    if mismatched:
      parts.append(f"shape mismatches: {mismatched}")
    raise CheckpointMismatchError("Checkpoint does not match the restore target; "
                                  + "; ".join(parts))


# --------------------------------------------------------------------------------------
# The checkpoint manager.
# --------------------------------------------------------------------------------------


class Checkpointer:
  """Saves and restores train states under ``model_dir/checkpoints/<step>/``.

  Args:
    model_dir: the run's directory (``MODEL_DIR``).
    save_interval_steps: :meth:`save` without ``force`` writes only on multiples of
      this (orbax also writes the very first save of a fresh directory).
    max_to_keep: keep the newest this many checkpoints (None: all).
    async_save: write in a background thread; call :meth:`wait_until_finished`
      (done by :meth:`close`) before relying on the files.
    config_str: gin config to record; default: ``gin.operative_config_str()`` at
      save time.
  """

  def __init__(self, model_dir: str, save_interval_steps: int = 1000,
               max_to_keep: Optional[int] = None, async_save: bool = True,
               config_str: Optional[str] = None):
    self.directory = os.path.join(os.path.abspath(model_dir), CHECKPOINTS_SUBDIR)
    self._config_str = config_str
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_interval_steps, max_to_keep=max_to_keep,
        create=True, enable_async_checkpointing=async_save)
    # Handlers are named up front so that a fresh process can read metadata (and
    # restore) before it has saved anything.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                       _METADATA: ocp.JsonCheckpointHandler()})

  # ---- queries ----
  def all_steps(self) -> list[int]:
    """Finalised checkpoint steps, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    """Newest finalised step, or None."""
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  # ---- save ----
  def save(self, step: int, state: PyTree, data_position: Any,
           force: bool = False) -> bool:
    """Saves ``state`` at ``step`` if due (or ``force``); returns whether it did.

    Args:
      step: training step (the directory name).
      state: train-state pytree (params, optimizer state, step, rng, ...).
      data_position: input-pipeline position, e.g. the number of batches consumed
        (anything JSON-serialisable).
      force: save even off the interval (preemption, end of training).
    """
    metadata = {"format_version": _FORMAT_VERSION, "step": int(step),
                "data_position": data_position, "gin_config": self._gin_config()}
    args = ocp.args.Composite(**{
        _STATE: ocp.args.StandardSave(_to_storable(state)),
        _METADATA: ocp.args.JsonSave(metadata)})
    saved = self._manager.save(int(step), args=args, force=force)
    if saved:
      logging.info("Checkpoint for step %d started in %s.", step, self.directory)
    return saved

  def _gin_config(self) -> str:
    if self._config_str is not None:
      return self._config_str
    try:
      import gin  # pylint: disable=g-import-not-at-top
      return gin.operative_config_str()
    except ImportError:
      return ""

  # ---- restore ----
  def _resolve_step(self, step: Optional[int]) -> int:
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"No finalised checkpoint in {self.directory}.")
    elif step not in self.all_steps():
      raise FileNotFoundError(f"No finalised checkpoint for step {step} in "
                              f"{self.directory}; have {self.all_steps()}.")
    return step

  def metadata(self, step: Optional[int] = None) -> dict[str, Any]:
    """The JSON metadata (data position, step, gin config) of a checkpoint."""
    step = self._resolve_step(step)
    out = self._manager.restore(step, args=ocp.args.Composite(
        **{_METADATA: ocp.args.JsonRestore()}))
    return dict(out[_METADATA])

  def saved_tree(self, step: Optional[int] = None) -> PyTree:
    """The saved state's tree of metadata leaves (``shape``, ``dtype``), read
    without loading any array."""
    step = self._resolve_step(step)
    saved = self._manager.item_metadata(step)[_STATE]
    return getattr(saved, "tree", saved)

  def saved_shapes(self, step: Optional[int] = None) -> dict[str, tuple[int, ...]]:
    """``{state path: shape}`` of a checkpoint (``params/...``, ``opt_state/...``)."""
    return _leaf_shapes(self.saved_tree(step), is_leaf=_is_metadata_leaf)

  def restore(self, step: Optional[int] = None, target: PyTree = None
              ) -> tuple[PyTree, dict[str, Any]]:
    """Restores ``(state, metadata)`` from ``step`` (default: latest).

    Args:
      step: which checkpoint; None for the latest.
      target: pytree of the expected state: ``jax.ShapeDtypeStruct`` leaves (with
        ``sharding=`` to restore sharded) or real arrays (their sharding is reused).
        None restores the saved tree as saved.

    Raises:
      FileNotFoundError: no such (finalised) checkpoint.
      CheckpointMismatchError: the target's keys or shapes differ from the
        checkpoint's (all differences named).
    """
    step = self._resolve_step(step)
    if target is None:
      state_args = ocp.args.StandardRestore()
    else:
      check_matches(self.saved_tree(step), target)
      state_args = ocp.args.StandardRestore(jax.tree.map(_abstract, target))
    out = self._manager.restore(step, args=ocp.args.Composite(**{
        _STATE: state_args, _METADATA: ocp.args.JsonRestore()}))
    state = out[_STATE]
    if target is not None:
      state = _from_storable(state, target)
    return state, dict(out[_METADATA])

  def restore_params(self, step: Optional[int] = None,
                     target: PyTree = None) -> PyTree:
    """Only the parameters of a checkpoint, read straight onto ``target``'s
    shardings (each process reads the shards it holds; no optimizer state and no
    unsharded host copy are read).

    Args:
      step: which checkpoint; None for the latest.
      target: the parameter tree: ``jax.ShapeDtypeStruct`` leaves with
        ``sharding=`` (or arrays, whose sharding is reused).

    Raises:
      FileNotFoundError: no such checkpoint. CheckpointMismatchError: the
        parameters' keys or shapes differ (all differences named).
    """
    step = self._resolve_step(step)
    saved = self.saved_tree(step)
    if not isinstance(saved, Mapping) or "params" not in saved:
      raise CheckpointMismatchError(
          f"checkpoint {self.directory}/{step} holds no 'params'.")
    check_matches(saved["params"], target)
    abstract = jax.tree.map(_abstract, target)
    restore_args = jax.tree.map(
        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, dtype=a.dtype,
                                       global_shape=a.shape), abstract)
    path = os.path.join(self.directory, str(step), _STATE)
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
      out = reader.restore(path, args=ocp.args.PyTreeRestore(
          item={"params": abstract}, restore_args={"params": restore_args},
          partial_restore=True))
    return out["params"]

  # ---- lifecycle ----
  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# --------------------------------------------------------------------------------------
# Preemption.
# --------------------------------------------------------------------------------------

_PREEMPTED = threading.Event()


def install_preemption_handler(signals: Iterable[int] = (signal.SIGTERM,)
                               ) -> Callable[[], None]:
  """On the given signals, set the preemption flag instead of dying.

  Must be called from the main thread. Returns a function restoring the previous
  handlers (useful in tests).
  """
  previous = {}

  def handler(signum, frame):
    del frame
    logging.warning("Signal %d received: will save a checkpoint and stop.", signum)
    _PREEMPTED.set()

  for sig in signals:
    previous[sig] = signal.signal(sig, handler)

  def uninstall():
    for sig, old in previous.items():
      signal.signal(sig, old)
  return uninstall


def preemption_requested(sync_hosts: bool = False, step: Optional[int] = None,
                         sync_period: int = 1) -> bool:
  """Whether a preemption signal arrived.

  Args:
    sync_hosts: on multi-host runs, agree across processes (any host signalled ->
      all stop together, so they all join the final save). This is a collective:
      every process must call it at the same steps.
    step: the global step (the same on every host); with ``sync_period``, the
      hosts gather their flags only when ``step % sync_period == 0`` (False
      otherwise), so a run does not pay a cross-host gather every step.
    sync_period: see ``step``.
  """
  flag = _PREEMPTED.is_set()
  if sync_hosts and jax.process_count() > 1:
    if step is not None and sync_period > 1 and step % sync_period:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
    return bool(np.any(flags))
  return flag


def clear_preemption() -> None:
  """Resets the flag (tests, or a loop that handled it)."""
  _PREEMPTED.clear()
