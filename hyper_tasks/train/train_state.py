"""The train state and its sharded layout on the device mesh.

``TrainState`` is the whole of what a run checkpoints: the global step, the
parameters, the grouped optimizer's state and the base dropout key. The per-step
dropout key is ``fold_in(rng, step)``, so the key itself never changes and a resumed
run draws exactly the dropout masks an uninterrupted run would.

``StateLayout`` computes, without allocating anything (``jax.eval_shape``), the
state's shapes and its ``NamedSharding``s: parameters from their logical axis names
through the one rules table (``partitioning.logical_axis_rules``), optimizer
statistics derived from their parameter (``optimizers.state_partition_specs``), the
step and key replicated. ``init_state`` then builds the state directly in that
layout (``jit`` with ``out_shardings``), so no host ever holds a full copy of a
parameter that is sharded.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hyper_tasks.train import optimizers
from hyper_tasks.train import partitioning

PyTree = Any


@struct.dataclass
class TrainState:
  """Everything a checkpoint holds.

  Attributes:
    step: int32 [], number of optimizer steps applied in this ``MODEL_DIR``.
    params: parameter tree (float32).
    opt_state: state of a ``GroupedOptimizer`` (per-group Adafactor statistics).
    rng: uint32 [2] (threefry; [4] for rbg), base dropout key; step ``s`` uses
      ``fold_in(rng, s)``.
  """
  step: jax.Array
  params: PyTree
  opt_state: PyTree
  rng: jax.Array


def init_input_shapes(sequence_lengths: Mapping[str, int],
                      batch_size: int = 1) -> dict[str, tuple[int, int]]:
  """Batch shapes for ``get_initial_variables`` from the data's sequence lengths."""
  return {
      "encoder_input_tokens": (batch_size, int(sequence_lengths["inputs"])),
      "decoder_input_tokens": (batch_size, int(sequence_lengths["targets"])),
      "hyper_encoder_input_tokens": (batch_size,
                                     int(sequence_lengths.get("hyper_inputs", 8))),
  }


@dataclasses.dataclass
class StateLayout:
  """Abstract train state and its shardings for one model, optimizer and mesh.

  Attributes:
    abstract: ``TrainState`` of ``jax.ShapeDtypeStruct`` (with shardings).
    shardings: ``TrainState`` of ``NamedSharding``.
    logical_specs: parameter tree of logical ``PartitionSpec``s (axis names).
  """
  abstract: TrainState
  shardings: TrainState
  logical_specs: PyTree
  mesh: Mesh

  @property
  def param_shardings(self) -> PyTree:
    return self.shardings.params


def unbox(tree: PyTree) -> PyTree:
  """Strips flax's axis-metadata boxes without applying sharding constraints.

  (``nn.unbox`` constrains under a global mesh, which fails outside ``jit``; the
  layout's ``out_shardings`` place the values instead.)
  """
  is_box = lambda x: isinstance(x, nn.Partitioned)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x,
                      tree, is_leaf=is_box)


def _params_fn(model, input_shapes):
  def fn(rng):
    return model.get_initial_variables(rng, input_shapes, boxed=True)["params"]
  return fn


def make_layout(model, optimizer: optimizers.GroupedOptimizer, mesh: Mesh,
                input_shapes: Mapping[str, tuple[int, ...]],
                rules: Optional[partitioning.Rules] = None,
                factored: bool = True,
                min_dim_size_to_factor: int = 128) -> StateLayout:
  """Shapes and shardings of the train state (no arrays are allocated).

  Args:
    model: an ``EncoderDecoderModel``.
    optimizer: the grouped optimizer.
    mesh: the ``('data', 'model')`` mesh.
    input_shapes: from :func:`init_input_shapes`.
    rules: logical-axis rules table (default ``partitioning.logical_axis_rules()``).
    factored, min_dim_size_to_factor: the optimizer's Adafactor factoring, to
      derive the statistics' shardings.
  """
  rules = partitioning.logical_axis_rules() if rules is None else rules
  boxed = jax.eval_shape(_params_fn(model, input_shapes), jax.random.PRNGKey(0))
  params_abs = unbox(boxed)
  # Parameters declared without axis names are replicated (one None per dim).
  logical_specs = jax.tree.map(
      lambda spec, a: spec if len(spec) == len(a.shape) else PartitionSpec(
          *((None,) * len(a.shape))),
      nn.get_partition_spec(boxed), params_abs,
      is_leaf=lambda x: isinstance(x, PartitionSpec))
  param_sh = partitioning.logical_to_mesh_sharding(logical_specs, mesh, rules,
                                                   params_abs)
  opt_abs = jax.eval_shape(optimizer.init, params_abs)
  param_mesh_specs = jax.tree.map(lambda s: s.spec, param_sh)
  opt_specs = optimizers.state_partition_specs(opt_abs, params_abs, param_mesh_specs,
                                               factored, min_dim_size_to_factor)
  opt_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), opt_specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))
  replicated = NamedSharding(mesh, PartitionSpec())
  shardings = TrainState(step=replicated, params=param_sh, opt_state=opt_sh,
                         rng=replicated)
  # Raw key data: uint32[2] for threefry, [4] for rbg (jax_default_prng_impl).
  rng_abs = jax.eval_shape(lambda: jax.random.split(jax.random.PRNGKey(0))[1])
  abstract = TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32),
      params=params_abs, opt_state=opt_abs, rng=rng_abs)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings)
  return StateLayout(abstract, shardings, logical_specs, mesh)


def make_init_fn(model, optimizer: optimizers.GroupedOptimizer, layout: StateLayout,
                 input_shapes: Mapping[str, tuple[int, ...]],
                 compiler_options: Optional[Mapping[str, Any]] = None):
  """Jitted ``init(key) -> TrainState`` that creates the state in ``layout``.

  ``key`` gives the parameter-initialisation key and the dropout key (different
  streams of one key).
  """
  def fn(key):
    init_key, dropout_key = jax.random.split(key)
    params = unbox(_params_fn(model, input_shapes)(init_key))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), rng=dropout_key)
  return jax.jit(fn, out_shardings=layout.shardings,
                 compiler_options=dict(compiler_options) if compiler_options else None)


def init_state(model, optimizer: optimizers.GroupedOptimizer, layout: StateLayout,
               input_shapes: Mapping[str, tuple[int, ...]], seed: int) -> TrainState:
  """A fresh state from ``PRNGKey(seed)``, created in place with ``layout``."""
  init = make_init_fn(model, optimizer, layout, input_shapes)
  return init(jax.random.PRNGKey(seed))


def place(tree: PyTree, shardings: PyTree) -> PyTree:
  """``device_put`` every leaf (numpy or jax) with its sharding."""
  return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)
