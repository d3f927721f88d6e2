"""Sharding: one logical-axis rules table, the device mesh, and multi-host helpers.

Every parameter and major activation carries logical axis names
(``nn.with_logical_partitioning`` / ``nn.with_logical_constraint``); this module maps
them onto a 2D mesh with axes ``('data', 'model')`` through ONE table,
:func:`logical_axis_rules` (t5x's standard rules plus the hypernetwork's names):

* ``batch`` -> ``data``; ``vocab``, ``mlp``, ``heads``, ``joined_kv`` -> ``model``;
  ``embed``, ``kv``, ``length`` and the other small axes are replicated.
* ``fsdp=True`` additionally shards ``embed`` (and ``hyper_embed``) over ``data``:
  parameters and optimizer state are then split across data-parallel replicas, like
  t5x's ``parameter_partitioning_dims=2``.
* Hypernetwork names: ``hyper_embed`` (like ``embed``), ``hyper_mlp`` and
  ``hyper_heads`` (like ``mlp``/``heads``, over ``model``); the generated-parameter
  axes ``adapter``, ``lora_rank``, ``prefix`` and ``slots`` are small or indexed
  per layer and stay replicated.

Resolution follows flax's priority rule (rules earlier in the table claim mesh axes
first, a mesh axis is used at most once per array) with two deliberate differences:
an axis name missing from the table is an error (a typo would otherwise silently
replicate a large parameter), and a dimension not divisible by its mesh axes falls
back to replicated with a warning instead of failing at ``device_put``.
"""
from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hyper_tasks import tree_utils

_GIN_MODULE = "hyper_tasks.train"

DATA = "data"
MODEL = "model"
MESH_AXES = (DATA, MODEL)

MeshAxes = Union[None, str, tuple[str, ...]]
Rules = Sequence[tuple[str, MeshAxes]]


@gin.configurable(module=_GIN_MODULE)
def logical_axis_rules(fsdp: bool = False,
                       extra_rules: Rules = ()) -> tuple[tuple[str, MeshAxes], ...]:
  """The rules table (logical name -> mesh axes), highest priority first.

  Args:
    fsdp: shard ``embed``/``hyper_embed`` over ``data`` as well.
    extra_rules: rules placed BEFORE the standard ones (so they take priority).
  """
  embed = DATA if fsdp else None
  rules = (
      ("batch", DATA),
      ("vocab", MODEL),
      ("mlp", MODEL),
      ("heads", MODEL),
      ("joined_kv", MODEL),
      ("kv", None),
      ("embed", embed),
      ("length", None),
      ("kv_length", None),
      ("relpos_buckets", None),
      ("abspos_buckets", None),
      ("layers", None),
      ("stack", None),
      ("mlp_activations", None),
      # Hypernetwork (its own encoder and heads, and the generated tensors).
      ("hyper_mlp", MODEL),
      ("hyper_heads", MODEL),
      ("hyper_kv", None),
      ("hyper_embed", embed),
      ("adapter", None),
      ("lora_rank", None),
      ("prefix", None),
      ("slots", None),
  )
  return tuple(extra_rules) + rules


def _as_tuple(mesh_axes: MeshAxes) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def resolve_logical_axes(logical_axes: Sequence[Optional[str]],
                         rules: Optional[Rules] = None,
                         shape: Optional[Sequence[int]] = None,
                         axis_sizes: Optional[Mapping[str, int]] = None,
                         name: str = "") -> PartitionSpec:
  """Maps one array's logical axis names to a mesh ``PartitionSpec``.

  Args:
    logical_axes: one logical name (or None) per dimension.
    rules: the rules table; default :func:`logical_axis_rules`.
    shape: the array's shape, to check divisibility (needs ``axis_sizes``).
    axis_sizes: ``{mesh axis: size}``, e.g. ``mesh.shape``.
    name: the array's name, for messages.

  Returns:
    A ``PartitionSpec`` over mesh axes (None = replicated along that dim).

  Raises:
    ValueError: an unknown or repeated logical name.
  """
  rules = logical_axis_rules() if rules is None else rules
  logical_axes = tuple(logical_axes)
  known = {r for r, _ in rules}
  unknown = [a for a in logical_axes if isinstance(a, str) and a not in known]
  if unknown:
    raise ValueError(f"Logical axis name(s) {unknown} of {name or 'an array'} are not "
                     f"in the rules table {sorted(known)}; add them to "
                     "hyper_tasks.train.partitioning.logical_axis_rules.")
  named = [a for a in logical_axes if a is not None]
  if len(set(named)) != len(named):
    raise ValueError(f"Repeated logical axis in {logical_axes} of {name!r}.")
  if shape is not None and len(shape) != len(logical_axes):
    raise ValueError(f"{name!r}: {len(logical_axes)} logical axes for shape {shape}.")

  result: list[MeshAxes] = [None] * len(logical_axes)
  assigned = [False] * len(logical_axes)
  used: set[str] = set()
  for rule_name, mesh_axes in rules:
    if rule_name not in logical_axes:
      continue
    pos = logical_axes.index(rule_name)
    axes = _as_tuple(mesh_axes)
    if assigned[pos] or any(a in used for a in axes):
      continue
    if axes and shape is not None and axis_sizes is not None:
      size = math.prod(axis_sizes[a] for a in axes)
      if shape[pos] % size:
        logging.warning(
            "%s: dim %d (%s, size %d) is not divisible by mesh axes %s (size %d); "
            "replicating it.", name or "array", pos, rule_name, shape[pos], axes, size)
        continue
    assigned[pos] = True
    used.update(axes)
    result[pos] = mesh_axes
  return PartitionSpec(*result)


def _is_spec(x) -> bool:
  return isinstance(x, PartitionSpec)


def logical_to_mesh_sharding(logical_specs_tree: Any, mesh: Mesh,
                             rules: Optional[Rules] = None,
                             shapes: Any = None) -> Any:
  """``NamedSharding`` for every logical ``PartitionSpec`` leaf.

  Args:
    logical_specs_tree: pytree of ``PartitionSpec``s of logical names, e.g.
      ``flax.linen.get_partition_spec(boxed_variables)``.
    mesh: the device mesh.
    rules: the rules table; default :func:`logical_axis_rules`.
    shapes: optional pytree of the same structure with arrays or
      ``ShapeDtypeStruct``s; enables the divisibility fallback.

  Returns:
    A pytree of ``NamedSharding`` with the structure of ``logical_specs_tree``.
  """
  def one(path, spec, shaped=None):
    shape = None if shaped is None else tuple(np.shape(shaped))
    mesh_spec = resolve_logical_axes(tuple(spec), rules, shape, mesh.shape,
                                     name=tree_utils.path_str(path))
    return NamedSharding(mesh, mesh_spec)

  if shapes is None:
    return jax.tree_util.tree_map_with_path(one, logical_specs_tree, is_leaf=_is_spec)
  return jax.tree_util.tree_map_with_path(one, logical_specs_tree, shapes,
                                          is_leaf=_is_spec)


def params_shardings(boxed_variables: Any, mesh: Mesh,
                     rules: Optional[Rules] = None) -> Any:
  """Shardings for flax variables made with ``nn.with_logical_partitioning``.

  Works on real or abstract (``jax.eval_shape(model.init, ...)``) variables; the
  result has the structure of the unboxed variables.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  specs = nn.get_partition_spec(boxed_variables)
  shapes = nn.unbox(boxed_variables)
  return logical_to_mesh_sharding(specs, mesh, rules, shapes)


@gin.configurable(module=_GIN_MODULE)
def make_mesh(mesh_shape: Optional[Sequence[int]] = None, num_partitions: int = 1,
              devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A ``('data', 'model')`` mesh.

  Args:
    mesh_shape: ``(data, model)``; default ``(num_devices // num_partitions,
      num_partitions)``.
    num_partitions: model-parallel size when ``mesh_shape`` is not given.
    devices: default ``jax.devices()`` (all processes' devices).
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if mesh_shape is None:
    if num_partitions < 1 or n % num_partitions:
      raise ValueError(f"num_partitions={num_partitions} does not divide the {n} "
                       "devices.")
    mesh_shape = (n // num_partitions, num_partitions)
  mesh_shape = tuple(int(d) for d in mesh_shape)
  if len(mesh_shape) != 2 or math.prod(mesh_shape) != n:
    raise ValueError(f"mesh_shape {mesh_shape} must be (data, model) with product "
                     f"{n} (the number of devices).")
  try:
    # Topology-aware order (TPU/GPU interconnect) where jax knows one.
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    grid = mesh_utils.create_device_mesh(mesh_shape, devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices, dtype=object).reshape(mesh_shape)
  return Mesh(grid, MESH_AXES)


def mesh_and_rules(parallelism) -> tuple[Mesh, Rules]:
  """The mesh and rules table a ``train_config.Parallelism`` describes (training,
  evaluation and inference place parameters the same way)."""
  mesh = parallelism.mesh
  if mesh is None:
    mesh = make_mesh(parallelism.mesh_shape, parallelism.num_partitions)
  rules = parallelism.rules
  if rules is None:
    rules = logical_axis_rules(fsdp=parallelism.fsdp)
  return mesh, rules


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Batches: the leading (batch) axis split over ``data``, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(DATA))


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Assembles each process's slice of the batch into global sharded arrays.

  Each process passes the rows ``host_shard_info(mesh, batch_size)`` names (its
  contiguous slice of the global batch); the global batch is their concatenation
  along the batch axis, in that order.
  """
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def host_shard_info(mesh: Optional[Mesh] = None,
                    batch_size: Optional[int] = None) -> tuple[int, int]:
  """``(shard_id, num_shards)``: this process reads the ``shard_id``-th of
  ``num_shards`` equal, contiguous slices of every global batch.

  Derived from where the mesh puts the batch rows (``data_sharding``): a process
  reads exactly the rows its own devices hold, so the global batch at step ``s``
  is the same examples in the same order whatever the number of processes (the
  input order is topology invariant, and a resume on another host count goes on
  where the run stopped). Processes whose devices share rows (the ``model`` axis
  across hosts) read the same slice. Without a mesh: one slice per process.
  """
  if mesh is None:
    return jax.process_index(), jax.process_count()
  if batch_size is None:
    raise ValueError("host_shard_info(mesh, batch_size): batch_size is required "
                     "with a mesh.")
  sharding = data_sharding(mesh)
  rows = set()
  for index in sharding.addressable_devices_indices_map((batch_size,)).values():
    rows.add(index[0].indices(batch_size)[:2])
  start = min(r[0] for r in rows)
  stop = max(r[1] for r in rows)
  covered = sum(b - a for a, b in rows)
  per_host = stop - start
  if covered != per_host or per_host <= 0 or batch_size % per_host or start % per_host:
    raise ValueError(
        f"process {jax.process_index()}: its devices hold batch rows {sorted(rows)} "
        f"of the global batch of {batch_size}, not one contiguous equal slice; "
        "order the mesh's devices by process (partitioning.make_mesh does).")
  return start // per_host, batch_size // per_host


def _wait_for_coordinator(address: str, process_id, num_processes,
                          timeout: float) -> None:
  """Returns once ``host:port`` accepts a TCP connection; raises
  ``RuntimeError`` naming the address after ``timeout`` seconds."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"coordinator_address={address!r} is not 'host:port'.")
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise RuntimeError(
            f"jax.distributed: process {process_id} of {num_processes} could not "
            f"reach the coordinator at {address} within {timeout} s ({e}); is "
            "process 0 running, and is the address/port right?") from e
      time.sleep(0.25)


@gin.configurable(module=_GIN_MODULE)
def maybe_initialize_distributed(coordinator_address: Optional[str] = None,
                                 num_processes: Optional[int] = None,
                                 process_id: Optional[int] = None,
                                 auto: bool = False,
                                 initialization_timeout: int = 300) -> bool:
  """Calls ``jax.distributed.initialize`` when configured; returns whether it did.

  Must run before anything touches devices. With ``coordinator_address`` (and
  usually ``num_processes``/``process_id``) it joins that cluster; with
  ``auto=True`` it lets jax detect the cluster (TPU pods, SLURM, ...). Otherwise,
  or when already initialised, it does nothing (single process). On CPU the
  processes' collectives use gloo (several processes on one machine, or CPU
  hosts). A coordinator not reached within ``initialization_timeout`` seconds
  raises ``RuntimeError`` naming the address and this process.
  """
  configured = auto or any(v is not None for v in
                           (coordinator_address, num_processes, process_id))
  if not configured or jax.distributed.is_initialized():
    return False
  if jax.config.jax_cpu_collectives_implementation in (None, "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address and process_id not in (None, 0):
    # jax aborts the process (a fatal C++ check) when the coordinator does not
    # answer; wait for it here, where the failure can be a clear error.
    _wait_for_coordinator(coordinator_address, process_id, num_processes,
                          initialization_timeout)
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=initialization_timeout)
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(
        f"jax.distributed.initialize: process {process_id} of {num_processes} could "
        f"not join the coordinator at {coordinator_address or '(auto-detected)'} "
        f"within {initialization_timeout} s: {e}") from e
  logging.info("jax.distributed initialised: process %d of %d.",
               jax.process_index(), jax.process_count())
  return True
