"""The groups of ``train()``'s settings, as frozen dataclasses gin can build.

``train()`` takes the run's identity flat (model, ``MODEL_DIR``, data, steps, batch
size, lengths, optimizer, seeds) and the rest in groups, as it already takes
``InitialRestore`` (``initial_restore.py``) and ``TrainEval`` (``train_eval.py``):

* :class:`Batching`: how the batches are formed and split (input split, shuffling,
  packing, grouped instructions, microbatches);
* :class:`Parallelism`: the device mesh, the logical-axis rules and FSDP;
* :class:`Checkpointing`: how often and how many checkpoints are written;
* :class:`Summaries`: TensorBoard summaries and the progress line.

Gin binds them like the others (``gin/runs/*.gin``)::

  Checkpointing.period = %CHECKPOINT_PERIOD
  train.checkpointing = @Checkpointing()

A ``None`` group in ``train()`` means the defaults below.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Optional

import gin
import jax

_GIN_MODULE = "hyper_tasks.train"


@gin.configurable(module=_GIN_MODULE)
@dataclasses.dataclass(frozen=True)
class Batching:
  """How the training batches are formed.

  Attributes:
    split: the input split.
    shuffle: shuffle the input (seeded by ``train.data_seed``).
    pack: pack several examples into one row (seqio packing).
    num_microbatches: gradient accumulation steps per batch.
    instruction_group_size: ``g > 1`` batches ``g`` examples of one instruction
      together and runs the hypernetwork once per group (``B / g`` instruction
      encodings per step instead of ``B``; see ``pipeline.get_dataset``). The
      number of groups must divide by the data-parallel size and
      ``num_microbatches``.
  """
  split: str = "train"
  shuffle: bool = True
  pack: bool = False
  num_microbatches: int = 1
  instruction_group_size: int = 1


@gin.configurable(module=_GIN_MODULE)
@dataclasses.dataclass(frozen=True)
class Parallelism:
  """The ``('data', 'model')`` mesh and how parameters are placed on it.

  Attributes:
    mesh: a ready mesh (e.g. over a subset of devices); default built from
      ``mesh_shape`` / ``num_partitions``.
    mesh_shape: ``(data, model)``; default ``(num_devices / num_partitions,
      num_partitions)``.
    num_partitions: model-parallel size when ``mesh_shape`` is not given.
    fsdp: shard parameters and optimizer state over ``data`` too.
    rules: logical-axis rules table; default
      ``partitioning.logical_axis_rules(fsdp)``.
  """
  mesh: Optional[jax.sharding.Mesh] = None
  mesh_shape: Optional[Sequence[int]] = None
  num_partitions: int = 1
  fsdp: bool = False
  rules: Optional[Sequence[tuple[str, object]]] = None


@gin.configurable(module=_GIN_MODULE)
@dataclasses.dataclass(frozen=True)
class Checkpointing:
  """Checkpoints in ``MODEL_DIR/checkpoints/``.

  Attributes:
    period: save every this many steps (and at the end, and on preemption).
    keep: how many to keep (None: all).
    async_save: write in the background while training continues.
    preemption_sync_period: on multi-host runs, the hosts agree on whether a
      preemption signal arrived (a cross-host gather) every this many steps, not
      every step; a single host checks its own flag every step.
  """
  period: int = 1000
  keep: Optional[int] = None
  async_save: bool = True
  preemption_sync_period: int = 10


@gin.configurable(module=_GIN_MODULE)
@dataclasses.dataclass(frozen=True)
class Summaries:
  """TensorBoard summaries in ``MODEL_DIR/train/`` and the progress line.

  Attributes:
    period: steps per summary / progress line.
    progress: print a progress line every summary.
    peak_flops_per_device: for MFU; default by device kind or measured.
  """
  period: int = 100
  progress: bool = True
  peak_flops_per_device: Optional[float] = None
