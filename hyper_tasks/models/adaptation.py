"""The ``Adaptation``: what a hypernetwork (or learned ``peft/`` params) hands the backbone.

An ``Adaptation`` holds
  * ``params``: the nested dict described by :meth:`PeftSpec.slots`, each leaf either
    per task (no batch axis, broadcast over the batch) or per example (leading ``[B]``);
  * ``instruction`` ``[B?, Lh, D]`` and ``instruction_mask`` ``[B?, Lh]``: the encoded
    instruction of instruction fusion (``None`` when fusion is off);
  * ``cross_kv``: the fused instruction's cross-attention keys and values per decoder
    layer, ``{"layers_<i>": {"key", "value"}}`` each ``[B?, Lh, H*K]`` (projected by
    that layer's ``encoder_decoder_attention`` with the adaptation's k/v LoRA and IA3
    applied). They depend only on the task, so ``Transformer.encode_instruction``
    computes them once and every decoder layer prepends them (masked by
    ``instruction_mask``) to the instance's cross-attention keys/values. An
    adaptation with ``instruction`` but no ``cross_kv`` (e.g. reloaded from an
    export) takes the slower equivalent path: ``instruction`` concatenated in front
    of the encoder output and projected for every instance
    (``Transformer.cache_instruction_kv`` adds the cached form).

It is a pytree, so it passes through ``jit`` and can be cached and reused: encoding the
instruction once per task and running many instances with it is the point of HINT.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp

Array = Any


@flax.struct.dataclass
class Adaptation:
  params: dict
  instruction: Optional[Array] = None
  instruction_mask: Optional[Array] = None
  cross_kv: Optional[dict] = None
  # True when every leaf carries a leading batch axis.
  batched: bool = flax.struct.field(pytree_node=False, default=True)

  def get(self, *path: str) -> Optional[dict]:
    """The sub-dict at ``path`` (e.g. ``"encoder", "layers_0", "mlp"``), or None."""
    node = self.params
    for key in path:
      if not isinstance(node, dict) or key not in node:
        return None
      node = node[key]
    return node

  def repeat(self, n: int) -> "Adaptation":
    """Repeat per-example leaves ``n`` times along the batch (for beam search)."""
    if not self.batched or n == 1:
      return self
    rep = lambda x: None if x is None else jnp.repeat(x, n, axis=0)
    return self._map(rep, batched=True)

  def broadcast(self, batch: int) -> "Adaptation":
    """Per-task -> per-example, by broadcasting every leaf to a leading ``[batch]``."""
    if self.batched:
      return self
    bc = lambda x: None if x is None else jnp.broadcast_to(x, (batch,) + x.shape)
    return self._map(bc, batched=True)

  def index(self, i) -> "Adaptation":
    """Example ``i`` of a batched adaptation, as a per-task (unbatched) one."""
    if not self.batched:
      return self
    take = lambda x: None if x is None else x[i]
    return self._map(take, batched=False)

  def _map(self, fn, batched: bool) -> "Adaptation":
    cross_kv = None if self.cross_kv is None else jax.tree.map(fn, self.cross_kv)
    return Adaptation(jax.tree.map(fn, self.params), fn(self.instruction),
                      fn(self.instruction_mask), cross_kv, batched=batched)


def batched_matmul(x: Array, w: Array) -> Array:
  """``x @ w`` where ``w`` is ``[din, dout]`` (shared) or ``[B, din, dout]`` (per example).

  Args:
    x: ``[B, ..., din]``.
  Returns:
    ``[B, ..., dout]``.
  """
  w = w.astype(x.dtype)
  if w.ndim == 2:
    return jnp.einsum("...i,io->...o", x, w)
  return jnp.einsum("b...i,bio->b...o", x, w)


def expand_like(v: Array, x: Array, feature_axes: int = 1) -> Array:
  """Reshape a per-task ``[F...]`` or per-example ``[B, F...]`` tensor to broadcast
  against ``x`` ``[B, ..., F...]`` (trailing ``feature_axes`` axes)."""
  v = v.astype(x.dtype)
  if v.ndim == feature_axes:
    return v
  middle = x.ndim - 1 - feature_axes
  return v.reshape(v.shape[:1] + (1,) * middle + v.shape[1:])
