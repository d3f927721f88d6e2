"""``train()``: the training loop, importable from a notebook and driven by gin.

One function runs a whole training job in ``MODEL_DIR``:

  ``MODEL_DIR/checkpoints/<step>/``  orbax train states + input position
  ``MODEL_DIR/train/``               TensorBoard: loss, z_loss, accuracy, learning
                                     rate / grad norm / param norm per group,
                                     tokens/s, examples/s, step time, FLOP/s, MFU
  ``MODEL_DIR/eval/``, ``eval_results/``  evaluation every ``eval_period`` steps
  ``MODEL_DIR/config.gin``           operative gin config (entry points)
  ``MODEL_DIR/restore_report.json``  what an initial restore loaded / re-initialised

Restore precedence: the latest checkpoint in ``MODEL_DIR`` (resume: parameters,
optimizer state, step, dropout key and the number of batches consumed, so the resumed
run sees exactly the batches and dropout masks of an uninterrupted one) > an
``InitialRestore`` (HF / t5x / our checkpoint, see ``initial_restore.py``) > scratch.

Checkpoints are written every ``Checkpointing.period`` steps (keeping
``Checkpointing.keep``), at the end, and when SIGTERM arrives (preemption: the loop
saves and returns with ``preempted=True``). A non-finite loss or gradient stops the
run with ``FloatingPointError`` naming the step; the step's update is discarded on
device and nothing is saved after it, so the last checkpoint on disk is good.

Sharding: a ``('data', 'model')`` mesh (``partitioning.make_mesh``), parameters and
optimizer state placed by the logical-axis rules table (``Parallelism.fsdp`` also splits
``embed`` over ``data``), batches split over ``data``; the step is traced under
``jax.set_mesh`` and ``nn.logical_axis_rules`` so activation constraints use the same
table.

Multi-host (TPU pods, multi-node GPU): configure
``hyper_tasks.train.partitioning.maybe_initialize_distributed`` (``auto=True`` on TPU
pods and SLURM; or ``coordinator_address``, ``num_processes``, ``process_id`` for
other multi-node GPU launchers). Every process then runs this same program: it
reads its own contiguous slice of each global batch (the rows its devices hold,
``partitioning.host_shard_info(mesh, batch_size)``; the pipeline reads the global
stream and keeps that slice, so the batch at step ``s`` is the same examples in the
same order on 1, 2 or 8 processes and a resume on another host count continues
exactly), the slices are assembled into one global array
(``partitioning.global_batch``), checkpoints are written cooperatively by orbax,
and only process 0 writes summaries and reports. ``batch_size`` is always the
global batch.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import gin
import jax

from hyper_tasks import gin_utils
from hyper_tasks.data import pipeline
from hyper_tasks.data import vocab as vocab_lib
from hyper_tasks.models import jit_cache
from hyper_tasks.train import checkpoints
from hyper_tasks.train import initial_restore as init_restore_lib
from hyper_tasks.train import optimizers
from hyper_tasks.train import param_restore
from hyper_tasks.train import partitioning
from hyper_tasks.train import preflight
from hyper_tasks.train import step_fn
from hyper_tasks.train import summaries as summaries_lib
from hyper_tasks.train import train_eval
from hyper_tasks.train import train_state as ts_lib
from hyper_tasks.train.train_config import (Batching, Checkpointing, Parallelism,
                                            Summaries)
from hyper_tasks.train.train_state import TrainState

Hook = Callable[[int, TrainState, Mapping[str, Any]], None]


class TrainResult(NamedTuple):
  """What :func:`train` returns."""
  state: TrainState
  history: list[dict[str, float]]       # one summary per ``summary_period``
  restore_report: Optional[param_restore.RestoreReport]
  preempted: bool


def check_model_dir(model_dir: str) -> str:
  """Creates ``model_dir`` and checks it is writable; returns its absolute path."""
  if not model_dir:
    raise ValueError("MODEL_DIR is not set (gin: MODEL_DIR = '...' or "
                     "--gin.MODEL_DIR=\"'...'\").")
  model_dir = os.path.abspath(os.path.expanduser(model_dir))
  probe = os.path.join(model_dir, f".write_test.{os.getpid()}")
  try:
    os.makedirs(model_dir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f"MODEL_DIR {model_dir!r} is not writable: {e}") from e
  return model_dir


def _writes_summaries() -> bool:
  return jax.process_index() == 0


def _check_finite(step: int, metrics: Mapping[str, Any],
                  ckpt: checkpoints.Checkpointer) -> None:
  if float(metrics["finite"]) > 0:
    return
  ckpt.wait_until_finished()
  raise FloatingPointError(
      f"Non-finite loss or gradients at step {step} (loss={float(metrics['loss'])}); "
      f"the step's update was discarded and the run stopped. The latest good "
      f"checkpoint is step {ckpt.latest_step()} in {ckpt.directory}.")


class _Compiled(NamedTuple):
  model: Any
  optimizer: Any
  layout: ts_lib.StateLayout
  init: Callable[..., TrainState]
  step: Callable[..., Any]
  path_group: dict[str, str]
  flops: dict  # {batch shapes key: FLOPs per step}


def _compiled(model, optimizer, mesh, rules, input_shapes, num_microbatches,
              compiler_options=None) -> _Compiled:
  """The jitted init/step of this (model, optimizer, mesh, ...), built once per
  combination (``models.jit_cache``), so that a notebook (or a test) calling
  train() again on the same objects neither retraces nor recompiles."""
  options = dict(compiler_options or {})
  key = ("train", mesh, tuple(map(tuple, rules)),
         tuple(sorted(input_shapes.items())), num_microbatches,
         tuple(sorted(options.items())))

  def build() -> _Compiled:
    layout = ts_lib.make_layout(model, optimizer, mesh, input_shapes, rules)
    path_group = optimizer.group_of(layout.abstract.params)
    donate = (0,) if jax.default_backend() != "cpu" else ()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    step = jax.jit(
        step_fn.make_train_step(model, optimizer, path_group, num_microbatches),
        in_shardings=(layout.shardings, partitioning.data_sharding(mesh)),
        out_shardings=(layout.shardings, replicated), donate_argnums=donate,
        compiler_options=options or None)
    init = ts_lib.make_init_fn(model, optimizer, layout, input_shapes, options)
    return _Compiled(model, optimizer, layout, init, step, path_group, {})
  return jit_cache.get(model, key, build, pins=(optimizer,))


@gin.configurable(module="hyper_tasks.train")
def train(*,
          model,
          model_dir: str,
          mixture_or_task_name: str,
          num_steps: int,
          batch_size: int,
          sequence_lengths: Mapping[str, int],
          optimizer: Optional[optimizers.GroupedOptimizer] = None,
          seed: int = 0,
          data_seed: int = 0,
          batching: Optional[Batching] = None,
          parallelism: Optional[Parallelism] = None,
          initial_restore: Optional[init_restore_lib.InitialRestore] = None,
          checkpointing: Optional[Checkpointing] = None,
          summaries: Optional[Summaries] = None,
          eval_period: int = 0,
          evaluation: Optional[train_eval.TrainEval] = None,
          hooks: Sequence[Hook] = (),
          dataset_fn: Optional[Callable[..., Any]] = None,
          compiler_options: Optional[Mapping[str, Any]] = None,
          check: Optional[preflight.CheckOptions] = None,
          compute_dtype: Any = None) -> TrainResult:
  """Trains ``model`` on a seqio task or mixture (see the module docstring).

  Args:
    model: an ``EncoderDecoderModel`` (gin: ``@make_model()``); it computes in its
      own dtype (``models.make_model.dtype``, "auto": bfloat16 on GPU/TPU).
    model_dir: ``MODEL_DIR``; created if needed; resumed from if it holds a
      checkpoint.
    mixture_or_task_name: seqio task or mixture to train on.
    num_steps: the step to stop at (steps of this ``MODEL_DIR``, resumed included).
    batch_size: global batch size (all hosts, all microbatches).
    sequence_lengths: ``{"hyper_inputs", "inputs", "targets"}`` lengths.
    optimizer: a ``GroupedOptimizer`` (gin: ``@adafactor_dual()`` ...); default
      ``optimizers.adafactor_dual()``.
    seed: parameter-initialisation and dropout seed.
    data_seed: input shuffling seed.
    batching: how batches are formed (``train_config.Batching``; default its
      defaults).
    parallelism: mesh and parameter placement (``train_config.Parallelism``).
    initial_restore: where a new run starts from (ignored when resuming).
    checkpointing: ``train_config.Checkpointing``.
    summaries: ``train_config.Summaries`` (TensorBoard, progress line, MFU).
    eval_period: evaluate every this many steps (0: never), with ``evaluation``.
    evaluation: a ``TrainEval`` (what to evaluate on).
    hooks: ``hook(step, state, metrics)`` after every step (device metrics).
    dataset_fn: optional ``dataset_fn(start_batch=, shard_id=, num_shards=,
      batch_size=)`` returning an iterator of numpy batches, instead of the seqio
      pipeline: batch ``i`` from ``start_batch`` on is rows ``[shard_id *
      batch_size, (shard_id + 1) * batch_size)`` of global batch ``i`` (whose
      size is ``num_shards * batch_size``).
    compiler_options: XLA options for the train step, e.g.
      ``{"xla_backend_optimization_level": 0}`` to compile tiny CPU runs faster.
    check: ``--check``: resolve and check everything (data, vocabulary, lengths,
      mesh, restore plan, lowered step; see ``preflight.py``) without training or
      writing anything.
    compute_dtype: removed; an error naming the one dtype knob,
      ``models.make_model.dtype``.

  Returns:
    ``TrainResult(state, history, restore_report, preempted)``; with ``check`` a
    ``preflight.CheckReport``.
  """
  if compute_dtype is not None:
    raise ValueError(
        f"train.compute_dtype={compute_dtype!r} is gone: the model's dtype is the "
        "one dtype knob. Set models.make_model.dtype ('auto': bfloat16 on GPU/TPU, "
        "float32 on CPU; or 'bfloat16' / 'float32'), in gin/runs/*.gin via "
        "COMPUTE_DTYPE.")
  batching = batching or Batching()
  parallelism = parallelism or Parallelism()
  checkpointing = checkpointing or Checkpointing()
  summaries = summaries or Summaries()
  partitioning.maybe_initialize_distributed()
  if check is None:
    model_dir = check_model_dir(model_dir)
  elif not model_dir:
    raise ValueError("MODEL_DIR is not set.")
  optimizer = optimizers.adafactor_dual() if optimizer is None else optimizer
  mesh, rules = partitioning.mesh_and_rules(parallelism)
  _check_batch_split(batch_size, batching, mesh.shape[partitioning.DATA],
                     dataset_fn is not None)
  if eval_period and evaluation is not None:
    data_size = mesh.shape[partitioning.DATA]
    if evaluation.batch_size % data_size:
      raise ValueError(
          f"TrainEval.batch_size={evaluation.batch_size} must be divisible by the "
          f"data-parallel size {data_size}: evaluation splits its batches over "
          "the training mesh's data axis.")
  if dataset_fn is None:
    pipeline.check_vocabulary([mixture_or_task_name], model.config.vocab_size,
                              where="train")
    if _writes_summaries() and check is None:
      vocab_lib.save_to_model_dir(pipeline.task_vocabulary(mixture_or_task_name),
                                  model_dir)
  preflight.check_lengths(sequence_lengths, model)
  data_fn = _data_fn(dataset_fn, mixture_or_task_name, sequence_lengths, batching,
                     data_seed)
  if check is not None:
    return _check(check, model, optimizer, mesh, rules, sequence_lengths, batch_size,
                  mixture_or_task_name, batching.num_microbatches, compiler_options,
                  initial_restore, model_dir, data_fn)

  in_main_thread = threading.current_thread() is threading.main_thread()
  checkpoints.clear_preemption()
  uninstall = checkpoints.install_preemption_handler() if in_main_thread else None
  ckpt = checkpoints.Checkpointer(model_dir, checkpointing.period, checkpointing.keep,
                                  async_save=checkpointing.async_save)
  writer = None
  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      input_shapes = ts_lib.init_input_shapes(sequence_lengths)
      fns = _compiled(model, optimizer, mesh, rules, input_shapes,
                      batching.num_microbatches, compiler_options)
      state, batches, report = _starting_state(fns, seed, ckpt, initial_restore,
                                               model_dir, mixture_or_task_name)

      step = int(state.step)
      if step >= num_steps:
        logging.info("MODEL_DIR already at step %d >= num_steps=%d.", step, num_steps)
        return TrainResult(state, [], report, False)

      shard_id, num_shards = partitioning.host_shard_info(mesh, batch_size)
      data = iter(data_fn(start_batch=batches, shard_id=shard_id,
                          num_shards=num_shards, batch_size=batch_size // num_shards))

      batch = partitioning.global_batch(next(data), mesh)
      shapes = jax.tree.map(lambda x: x.shape, batch)
      shapes_key = tuple(sorted(shapes.items()))
      if shapes_key not in fns.flops:
        fns.flops[shapes_key] = summaries_lib.step_flops(
            fns.step.lower(state, batch), model, shapes)
      flops = fns.flops[shapes_key]
      peak = summaries_lib.peak_flops_per_device(summaries.peak_flops_per_device)
      writer = summaries_lib.TrainSummaries(
          model_dir, num_steps, flops, peak, mesh.size, write=_writes_summaries(),
          progress=summaries.progress and _writes_summaries())
      if _writes_summaries():
        gin_utils.write_operative_config(model_dir)

      pending, last, preempted = [], None, False
      writer.reset_clock()
      while True:
        state, metrics = fns.step(state, batch)
        step += 1
        batches += 1
        if last is not None:
          _check_finite(*last, ckpt)
        last = (step, metrics)
        pending.append(metrics)
        for hook in hooks:
          hook(step, state, metrics)
        done = step >= num_steps
        if step % summaries.period == 0 or done:
          _check_finite(*last, ckpt)
          writer.write(step, pending)
          pending = []
        if eval_period and evaluation is not None and (step % eval_period == 0 or
                                                       done):
          _check_finite(*last, ckpt)
          # Batches split over the data axis; no activation rules (the
          # parameters' placement and the inputs' decide the layout).
          with nn.logical_axis_rules(()):
            train_eval.run(evaluation, model, state.params, step, model_dir,
                           sequence_lengths, mesh=mesh)
          writer.reset_clock()
        preempted = checkpoints.preemption_requested(
            sync_hosts=jax.process_count() > 1, step=step,
            sync_period=checkpointing.preemption_sync_period)
        if done or preempted or step % checkpointing.period == 0:
          _check_finite(*last, ckpt)
          ckpt.save(step, state, {"batches": batches,
                                  "dataset": mixture_or_task_name}, force=True)
        if done or preempted:
          break
        batch = partitioning.global_batch(next(data), mesh)
      if preempted:
        logging.warning("Preempted: saved step %d and stopped.", step)
      ckpt.wait_until_finished()
      return TrainResult(state, writer.history, report, preempted)
  finally:
    ckpt.close()
    if writer is not None:
      writer.close()
    if uninstall is not None:
      uninstall()


def _check_batch_split(batch_size: int, batching: Batching, data_size: int,
                       own_dataset_fn: bool) -> None:
  """The global batch splits over hosts, the data axis, microbatches and groups."""
  num_microbatches = batching.num_microbatches
  if batch_size % data_size or batch_size % jax.process_count():
    raise ValueError(f"batch_size={batch_size} must be divisible by the data-parallel "
                     f"size {data_size} and the number of processes "
                     f"{jax.process_count()}.")
  if num_microbatches < 1 or batch_size % num_microbatches:
    raise ValueError(f"batch_size={batch_size} is not divisible by "
                     f"num_microbatches={num_microbatches}.")
  group = int(batching.instruction_group_size)
  if group > 1:
    groups = batch_size // group if batch_size % group == 0 else None
    if (groups is None or groups % data_size or groups % num_microbatches
        or groups % jax.process_count()):
      raise ValueError(
          f"instruction_group_size={group}: batch_size={batch_size} must hold a "
          f"whole number of groups, divisible by the data-parallel size "
          f"{data_size}, num_microbatches={num_microbatches} and the number of "
          f"processes {jax.process_count()}.")
    if own_dataset_fn:
      raise ValueError("instruction_group_size applies to the seqio pipeline; a "
                       "dataset_fn must group (and dedupe) instructions itself.")


def _data_fn(dataset_fn, name: str, sequence_lengths: Mapping[str, int],
             batching: Batching, data_seed: int) -> Callable[..., Any]:
  """``dataset_fn``, or the seqio pipeline behind the same signature."""
  if dataset_fn is not None:
    return dataset_fn

  def seqio_batches(start_batch, shard_id, num_shards, batch_size):
    return pipeline.get_dataset(
        name, batching.split, sequence_lengths, batch_size,
        shuffle=batching.shuffle, seed=data_seed, shard_id=shard_id,
        num_shards=num_shards, pack=batching.pack, start_batch=start_batch,
        instruction_group_size=int(batching.instruction_group_size))
  return seqio_batches


def _check(options, model, optimizer, mesh, rules, sequence_lengths, batch_size,
           name, num_microbatches, compiler_options, initial, model_dir, data_fn
           ) -> preflight.CheckReport:
  """``train(check=...)``: everything up to the first step, nothing run or written."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    input_shapes = ts_lib.init_input_shapes(sequence_lengths)
    fns = _compiled(model, optimizer, mesh, rules, input_shapes, num_microbatches,
                    compiler_options)
    shard_id, num_shards = partitioning.host_shard_info(mesh, batch_size)
    data = data_fn(start_batch=0, shard_id=shard_id, num_shards=num_shards,
                   batch_size=batch_size // num_shards)
    batch = next(iter(data))
    return preflight.train_report(
        model=model, optimizer=optimizer, fns=fns, mesh=mesh,
        sequence_lengths=sequence_lengths, batch_size=batch_size, batch=batch,
        initial_restore=initial, model_dir=model_dir, options=options,
        mixture_or_task_name=name, num_microbatches=num_microbatches)


def _starting_state(fns: _Compiled, seed, ckpt, initial, model_dir, dataset_name):
  """(state, batches consumed, restore report) by the restore precedence."""
  latest = ckpt.latest_step()
  if latest is not None:
    state, metadata = ckpt.restore(latest, target=fns.layout.abstract)
    position = metadata.get("data_position") or {}
    batches = int(position.get("batches", latest))
    if position.get("dataset") not in (None, dataset_name):
      logging.warning("Resuming a run that trained on %r with %r: the input position "
                      "(%d batches) refers to the old dataset.",
                      position.get("dataset"), dataset_name, batches)
    logging.info("Resuming from %s/%d (batches consumed: %d).", ckpt.directory,
                 latest, batches)
    return state, batches, None
  if initial is None:
    return fns.init(jax.random.PRNGKey(seed)), 0, None
  direct = init_restore_lib.restore_direct(initial, fns.optimizer, fns.layout, seed)
  if direct is not None:
    state, report, notes = direct
  else:
    # No full random initialisation: only re-initialised parameters are made.
    fresh = init_restore_lib.FreshInit(fns.init, jax.random.PRNGKey(seed),
                                       fns.optimizer, fns.layout)
    state, report, notes = init_restore_lib.restore_initial(
        initial, fns.optimizer, fns.layout, fresh)
  text = init_restore_lib.format_report(report, notes)
  logging.info("Initial restore:\n%s", text)
  if _writes_summaries():
    print(text, flush=True)
    init_restore_lib.save_report(model_dir, report, notes)
  return state, 0, report
