"""Basic T5 layers with logical axis names on every parameter.

Parameters are float32; computation runs in ``dtype`` (e.g. bfloat16). Kernels are 2-D
as in t5x (``[embed, joined_kv]`` for attention projections) so t5x checkpoints map
one-to-one.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = Any
Initializer = Callable[..., Array]


def normal_init(stddev: float) -> Initializer:
  return nn.initializers.normal(stddev=stddev)


def constrain(x, axes: Sequence[str | None]):
  """Annotate an activation with logical axes (a no-op outside a mesh context)."""
  return nn.with_logical_constraint(x, tuple(axes))


class Dense(nn.Module):
  """``x @ kernel`` over the last axis, no bias (T5 uses none)."""
  features: int
  axes: tuple[str, str]
  init_stddev: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(normal_init(self.init_stddev), self.axes),
        (x.shape[-1], self.features), jnp.float32)
    return jnp.einsum("...i,io->...o", x.astype(self.dtype),
                      jnp.asarray(kernel, self.dtype))


class Embed(nn.Module):
  """Token embedding table ``[vocab, embed]``, also usable as a tied output layer."""
  num_embeddings: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding",
        nn.with_logical_partitioning(normal_init(1.0), ("vocab", "embed")),
        (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, tokens):
    """``[B, L]`` int -> ``[B, L, D]``."""
    out = jnp.take(jnp.asarray(self.embedding, self.dtype), tokens, axis=0)
    return constrain(out, ("batch", "length", "embed"))

  def attend(self, x):
    """``[B, L, D] -> [B, L, vocab]`` logits against the table (tied embeddings)."""
    return jnp.einsum("bld,vd->blv", x.astype(self.dtype),
                      jnp.asarray(self.embedding, self.dtype))


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, no bias; computed in float32.

  ``axis`` is the scale's logical axis: ``embed`` in the backbone, ``hyper_embed``
  over the hypernetwork's width.
  """
  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  axis: str = "embed"

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale",
                       nn.with_logical_partitioning(nn.initializers.ones, (self.axis,)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.epsilon)
    return (y * scale).astype(self.dtype)


def relative_position_bucket(relative_position, bidirectional: bool,
                             num_buckets: int, max_distance: int):
  """T5's bucketing of ``memory_position - query_position``.

  Half the buckets (per direction when bidirectional) are exact for small distances,
  the rest logarithmic up to ``max_distance``; everything further shares the last.
  """
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # max(n, 1) only avoids log(0); those entries take the is_small branch.
  val_if_large = max_exact + (
      jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
      / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
  """Learned per-head scalar bias per position bucket, shared by all layers of a stack."""
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query_positions, key_positions):
    """Bias for ``[B|1, Lq]`` query and ``[B|1, Lk]`` key positions -> ``[B|1, H, Lq, Lk]``."""
    table = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(normal_init(1.0), ("heads", "relpos_buckets")),
        (self.num_heads, self.num_buckets), jnp.float32)
    rel = key_positions[:, None, :] - query_positions[:, :, None]
    buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets,
                                       self.max_distance)
    # [H, buckets] gathered at [B, Lq, Lk] -> [B, H, Lq, Lk]
    bias = jnp.take(table, buckets, axis=1)
    return jnp.moveaxis(bias, 0, 1).astype(self.dtype)


def activation_fn(name: str):
  if name == "relu":
    return jax.nn.relu
  if name in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
    # HF's "gated-gelu" uses gelu_new, the tanh approximation.
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "silu":
    return jax.nn.silu
  raise ValueError(f"Unsupported activation {name!r}.")


def padding_to_ids(tokens) -> np.ndarray:
  return (tokens > 0)
