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

Checkpoints are written every ``checkpoint_period`` steps (keeping
``keep_checkpoints``), at the end, and when SIGTERM arrives (preemption: the loop
saves and returns with ``preempted=True``). A non-finite loss or gradient stops the
run with ``FloatingPointError`` naming the step; the step's update is discarded on
device and nothing is saved after it, so the last checkpoint on disk is good.

Sharding: a ``('data', 'model')`` mesh (``partitioning.make_mesh``), parameters and
optimizer state placed by the logical-axis rules table (``fsdp=True`` also splits
``embed`` over ``data``), batches split over ``data``; the step is traced under
``jax.set_mesh`` and ``nn.logical_axis_rules`` so activation constraints use the same
table.

Multi-host (TPU pods, multi-node GPU): configure
``hyper_tasks.train.partitioning.maybe_initialize_distributed`` (``auto=True`` on TPU
pods and SLURM; or ``coordinator_address``, ``num_processes``, ``process_id`` for
other multi-node GPU launchers). Every process then runs this same program: it
reads its own shard of the input (``host_shard_info()`` -> seqio ``ShardInfo``,
``batch_size / num_processes`` examples per step), the per-host batches are
assembled into one global array (``partitioning.global_batch``), checkpoints are
written cooperatively by orbax, and only process 0 writes summaries and reports.
``batch_size`` is always the global batch.
"""
from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from hyper_tasks.models import jit_cache
from hyper_tasks.train import checkpoints
from hyper_tasks.train import initial_restore as init_restore_lib
from hyper_tasks.train import optimizers
from hyper_tasks.train import partitioning
from hyper_tasks.train import preflight
from hyper_tasks.train import param_restore
from hyper_tasks.train import step_fn
from hyper_tasks.train import summaries as summaries_lib
from hyper_tasks.train import train_eval
from hyper_tasks.train import train_state as ts_lib
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


ACCELERATOR_COMPUTE_DTYPE = "bfloat16"


def resolve_compute_dtype(compute_dtype: Optional[str],
                          backend: Optional[str] = None) -> Optional[str]:
  """``"auto"`` -> bfloat16 on GPU/TPU, None (the model's own dtype) on CPU; any
  other value as given. Parameters and optimizer state stay float32 either way."""
  if compute_dtype != "auto":
    return compute_dtype
  backend = jax.default_backend() if backend is None else backend
  return ACCELERATOR_COMPUTE_DTYPE if backend in ("gpu", "tpu", "cuda",
                                                  "rocm") else None


def with_compute_dtype(model, dtype) -> Any:
  """A copy of ``model`` whose backbone computes in ``dtype`` (params stay f32)."""
  dtype = jnp.dtype(dtype)
  module = model.module
  config = module.config.replace(dtype=dtype)
  new = copy.copy(model)
  new.module = module.clone(config=config)
  new.config = config
  return new


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
          split: str = "train",
          shuffle: bool = True,
          data_seed: int = 0,
          pack: bool = False,
          seed: int = 0,
          num_microbatches: int = 1,
          compute_dtype: Optional[str] = "auto",
          mesh: Optional[jax.sharding.Mesh] = None,
          mesh_shape: Optional[Sequence[int]] = None,
          num_partitions: int = 1,
          fsdp: bool = False,
          rules: Optional[partitioning.Rules] = None,
          initial_restore: Optional[init_restore_lib.InitialRestore] = None,
          checkpoint_period: int = 1000,
          keep_checkpoints: Optional[int] = None,
          async_checkpoints: bool = True,
          summary_period: int = 100,
          eval_period: int = 0,
          evaluation: Optional[train_eval.TrainEval] = None,
          peak_flops_per_device: Optional[float] = None,
          progress: bool = True,
          hooks: Sequence[Hook] = (),
          dataset_fn: Optional[Callable[..., Any]] = None,
          compiler_options: Optional[Mapping[str, Any]] = None,
          instruction_group_size: int = 1,
          check: Optional[preflight.CheckOptions] = None) -> TrainResult:
  """Trains ``model`` on a seqio task or mixture (see the module docstring).

  Args:
    model: an ``EncoderDecoderModel`` (gin: ``@make_model()``).
    model_dir: ``MODEL_DIR``; created if needed; resumed from if it holds a
      checkpoint.
    mixture_or_task_name: seqio task or mixture to train on.
    num_steps: the step to stop at (steps of this ``MODEL_DIR``, resumed included).
    batch_size: global batch size (all hosts, all microbatches).
    sequence_lengths: ``{"hyper_inputs", "inputs", "targets"}`` lengths.
    optimizer: a ``GroupedOptimizer`` (gin: ``@adafactor_dual()`` ...); default
      ``optimizers.adafactor_dual()``.
    split, shuffle, data_seed, pack: input pipeline settings.
    seed: parameter-initialisation and dropout seed.
    num_microbatches: gradient accumulation steps per batch.
    compute_dtype: e.g. ``"bfloat16"``: the backbone computes in it; parameters
      and optimizer state stay float32. ``"auto"`` (default): bfloat16 on GPU and
      TPU, the model's dtype on CPU; None: always the model's dtype.
    mesh: a ready ``('data', 'model')`` mesh (e.g. over a subset of devices);
      default built from ``mesh_shape`` / ``num_partitions``.
    mesh_shape: ``(data, model)``; default ``(num_devices / num_partitions,
      num_partitions)``.
    num_partitions: model-parallel size when ``mesh_shape`` is not given.
    fsdp: shard parameters and optimizer state over ``data`` too.
    rules: logical-axis rules table; default ``partitioning.logical_axis_rules(fsdp)``.
    initial_restore: where a new run starts from (ignored when resuming).
    checkpoint_period, keep_checkpoints, async_checkpoints: checkpointing.
    summary_period: steps per TensorBoard summary / progress line.
    eval_period: evaluate every this many steps (0: never), with ``evaluation``.
    evaluation: a ``TrainEval`` (what to evaluate on).
    peak_flops_per_device: for MFU; default by device kind or measured.
    progress: print a progress line every summary.
    hooks: ``hook(step, state, metrics)`` after every step (device metrics).
    dataset_fn: optional ``dataset_fn(start_batch=, shard_id=, num_shards=,
      batch_size=)`` returning an iterator of numpy batches, instead of the seqio
      pipeline.
    compiler_options: XLA options for the train step, e.g.
      ``{"xla_backend_optimization_level": 0}`` to compile tiny CPU runs faster.
    instruction_group_size: ``g > 1`` batches ``g`` examples of one instruction
      together and runs the hypernetwork once per group (``B / g`` instruction
      encodings per step instead of ``B``; see ``pipeline.get_dataset``). The
      number of groups must divide by the data-parallel size and
      ``num_microbatches``.
    check: ``--check``: resolve and check everything (data, vocabulary, lengths,
      mesh, restore plan, lowered step; see ``preflight.py``) without training or
      writing anything.

  Returns:
    ``TrainResult(state, history, restore_report, preempted)``; with ``check`` a
    ``preflight.CheckReport``.
  """
  partitioning.maybe_initialize_distributed()
  if check is None:
    model_dir = check_model_dir(model_dir)
  elif not model_dir:
    raise ValueError("MODEL_DIR is not set.")
  optimizer = optimizers.adafactor_dual() if optimizer is None else optimizer
  compute_dtype = resolve_compute_dtype(compute_dtype)
  if compute_dtype:
    model = with_compute_dtype(model, compute_dtype)
  if mesh is None:
    mesh = partitioning.make_mesh(mesh_shape, num_partitions)
  rules = partitioning.logical_axis_rules(fsdp=fsdp) if rules is None else rules
  data_size = mesh.shape[partitioning.DATA]
  if batch_size % data_size or batch_size % jax.process_count():
    raise ValueError(f"batch_size={batch_size} must be divisible by the data-parallel "
                     f"size {data_size} and the number of processes "
                     f"{jax.process_count()}.")
  if num_microbatches < 1 or batch_size % num_microbatches:
    raise ValueError(f"batch_size={batch_size} is not divisible by "
                     f"num_microbatches={num_microbatches}.")
  group = int(instruction_group_size)
  if group > 1:
    groups = batch_size // group if batch_size % group == 0 else None
    if (groups is None or groups % data_size or groups % num_microbatches
        or groups % jax.process_count()):
      raise ValueError(
          f"instruction_group_size={group}: batch_size={batch_size} must hold a "
          f"whole number of groups, divisible by the data-parallel size "
          f"{data_size}, num_microbatches={num_microbatches} and the number of "
          f"processes {jax.process_count()}.")
    if dataset_fn is not None:
      raise ValueError("instruction_group_size applies to the seqio pipeline; a "
                       "dataset_fn must group (and dedupe) instructions itself.")

  if dataset_fn is None:
    from hyper_tasks.data import pipeline  # pylint: disable=g-import-not-at-top
    from hyper_tasks.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
    pipeline.check_vocabulary([mixture_or_task_name], model.config.vocab_size,
                              where="train")
    if _writes_summaries() and check is None:
      vocab_lib.save_to_model_dir(pipeline.task_vocabulary(mixture_or_task_name),
                                  model_dir)
  preflight.check_lengths(sequence_lengths, model)
  if check is not None:
    return _check(check, model, optimizer, mesh, rules, sequence_lengths, batch_size,
                  mixture_or_task_name, split, shuffle, data_seed, pack, group,
                  num_microbatches, compiler_options, initial_restore, model_dir,
                  dataset_fn)

  in_main_thread = threading.current_thread() is threading.main_thread()
  checkpoints.clear_preemption()
  uninstall = checkpoints.install_preemption_handler() if in_main_thread else None
  ckpt = checkpoints.Checkpointer(model_dir, checkpoint_period, keep_checkpoints,
                                  async_save=async_checkpoints)
  summaries = None
  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      input_shapes = ts_lib.init_input_shapes(sequence_lengths)
      fns = _compiled(model, optimizer, mesh, rules, input_shapes, num_microbatches,
                      compiler_options)
      state, batches, report = _starting_state(fns, seed, ckpt, initial_restore,
                                               model_dir, mixture_or_task_name)

      step = int(state.step)
      if step >= num_steps:
        logging.info("MODEL_DIR already at step %d >= num_steps=%d.", step, num_steps)
        return TrainResult(state, [], report, False)

      shard_id, num_shards = partitioning.host_shard_info()
      local_batch = batch_size // num_shards
      if dataset_fn is not None:
        data = dataset_fn(start_batch=batches, shard_id=shard_id,
                          num_shards=num_shards, batch_size=local_batch)
      else:
        from hyper_tasks.data import pipeline  # pylint: disable=g-import-not-at-top
        data = pipeline.get_dataset(
            mixture_or_task_name, split, sequence_lengths, local_batch,
            shuffle=shuffle, seed=data_seed, shard_id=shard_id,
            num_shards=num_shards, pack=pack, start_batch=batches,
            instruction_group_size=group)
      data = iter(data)

      batch = partitioning.global_batch(next(data), mesh)
      shapes = jax.tree.map(lambda x: x.shape, batch)
      shapes_key = tuple(sorted(shapes.items()))
      if shapes_key not in fns.flops:
        fns.flops[shapes_key] = summaries_lib.step_flops(
            fns.step.lower(state, batch), model, shapes)
      flops = fns.flops[shapes_key]
      peak = summaries_lib.peak_flops_per_device(peak_flops_per_device)
      summaries = summaries_lib.TrainSummaries(
          model_dir, num_steps, flops, peak, mesh.size, write=_writes_summaries(),
          progress=progress and _writes_summaries())
      if _writes_summaries():
        _write_config(model_dir)

      pending, last, preempted = [], None, False
      summaries.reset_clock()
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
        if step % summary_period == 0 or done:
          _check_finite(*last, ckpt)
          summaries.write(step, pending)
          pending = []
        if eval_period and evaluation is not None and (step % eval_period == 0 or
                                                       done):
          _check_finite(*last, ckpt)
          # The evaluator's batches need not divide the mesh: no activation rules.
          with nn.logical_axis_rules(()):
            train_eval.run(evaluation, model, state.params, step, model_dir,
                           sequence_lengths)
          summaries.reset_clock()
        preempted = checkpoints.preemption_requested(
            sync_hosts=jax.process_count() > 1)
        if done or preempted or step % checkpoint_period == 0:
          _check_finite(*last, ckpt)
          ckpt.save(step, state, {"batches": batches,
                                  "dataset": mixture_or_task_name}, force=True)
        if done or preempted:
          break
        batch = partitioning.global_batch(next(data), mesh)
      if preempted:
        logging.warning("Preempted: saved step %d and stopped.", step)
      ckpt.wait_until_finished()
      return TrainResult(state, summaries.history, report, preempted)
  finally:
    ckpt.close()
    if summaries is not None:
      summaries.close()
    if uninstall is not None:
      uninstall()


def _check(options, model, optimizer, mesh, rules, sequence_lengths, batch_size,
           name, split, shuffle, data_seed, pack, group, num_microbatches,
           compiler_options, initial, model_dir, dataset_fn
           ) -> preflight.CheckReport:
  """``train(check=...)``: everything up to the first step, nothing run or written."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    input_shapes = ts_lib.init_input_shapes(sequence_lengths)
    fns = _compiled(model, optimizer, mesh, rules, input_shapes, num_microbatches,
                    compiler_options)
    shard_id, num_shards = partitioning.host_shard_info()
    local_batch = batch_size // num_shards
    if dataset_fn is not None:
      data = dataset_fn(start_batch=0, shard_id=shard_id, num_shards=num_shards,
                        batch_size=local_batch)
    else:
      from hyper_tasks.data import pipeline  # pylint: disable=g-import-not-at-top
      data = pipeline.get_dataset(
          name, split, sequence_lengths, local_batch, shuffle=shuffle,
          seed=data_seed, shard_id=shard_id, num_shards=num_shards, pack=pack,
          instruction_group_size=group)
    batch = next(iter(data))
    return preflight.train_report(
        model=model, optimizer=optimizer, fns=fns, mesh=mesh,
        sequence_lengths=sequence_lengths, batch_size=batch_size, batch=batch,
        initial_restore=initial, model_dir=model_dir, options=options,
        mixture_or_task_name=name, num_microbatches=num_microbatches)


def _write_config(model_dir: str) -> None:
  from hyper_tasks import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.write_operative_config(model_dir)


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
    fresh = fns.init(jax.random.PRNGKey(seed))
    state, report, notes = init_restore_lib.restore_initial(
        initial, fns.optimizer, fns.layout, fresh)
  text = init_restore_lib.format_report(report, notes)
  logging.info("Initial restore:\n%s", text)
  if _writes_summaries():
    print(text, flush=True)
    init_restore_lib.save_report(model_dir, report, notes)
  return state, 0, report
