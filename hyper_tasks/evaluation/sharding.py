"""Evaluation on a device mesh: batches split over its data axis, outputs on
every process.

The caller places the parameters (``train.partitioning`` puts them by the same
logical-axis rules as training: data parallel, FSDP, model parallel; ``eval.py``
restores a checkpoint straight into that layout). Every process reads the same
records in the same order and so builds the same global batch; ``place_batch``
gives each device only its rows, so the processes split every batch's examples
between them, and ``tree_utils.to_host`` brings each output back to every
process (an all-gather when an array spans processes). The report is therefore
the same on every process; process 0 writes it.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"  # The mesh axis batches are split over (train.partitioning's).


def check_mesh(mesh: Optional[Mesh], batch_size: int,
               data_axis: str = DATA_AXIS) -> None:
  """A mesh with ``data_axis`` whose size divides ``batch_size`` (or no mesh)."""
  if mesh is None:
    return
  if data_axis not in mesh.shape:
    raise ValueError(f"evaluation mesh axes {tuple(mesh.shape)} have no "
                     f"{data_axis!r} axis to split batches over.")
  size = mesh.shape[data_axis]
  if batch_size % size:
    raise ValueError(f"evaluation batch_size={batch_size} is not divisible by the "
                     f"mesh's {data_axis!r} axis ({size} devices); use a multiple "
                     f"of {size}.")


def place_batch(batch: Mapping[str, Any], mesh: Mesh,
                data_axis: str = DATA_AXIS) -> dict[str, jax.Array]:
  """Global arrays of ``batch`` (the same numpy values on every process), the
  batch axis split over ``data_axis``, the rest replicated."""
  sharding = NamedSharding(mesh, PartitionSpec(data_axis))

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return {k: one(v) for k, v in batch.items()}
