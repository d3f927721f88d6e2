"""T5 multi-head attention with PEFT hook points and a key/value decoding cache.

Hooks, all driven by the slot dict of an ``Adaptation`` (None = plain T5):
  * LoRA deltas on the q/k/v/o projections (``lora_<t>_a``, ``lora_<t>_b``);
  * IA3 scaling of keys and values (``ia3_k``, ``ia3_v``);
  * key/value prefixes (``prefix_key``, ``prefix_value``), outside the cache;
  * fused keys/values: precomputed, masked keys/values prepended to the projected
    ones (instruction fusion's per-task cross-attention keys, see ``Adaptation``).
T5 does not scale ``q k^T`` by ``1/sqrt(d_kv)``: the scaling lives in the init.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyper_tasks.models.config import T5Config
from hyper_tasks.models.layers import Dense, constrain
from hyper_tasks.models.peft.ia3 import ia3_scale
from hyper_tasks.models.peft.lora import add_lora
from hyper_tasks.models.peft.prefixes import prefix_kv, with_prefix

_NEG_INF = -1e10


class MultiHeadAttention(nn.Module):
  config: T5Config
  lora_scales: Optional[dict] = None  # target -> scale

  def _proj(self, name, x, features, axes, stddev, slots, target):
    cfg = self.config
    y = Dense(features, axes, stddev, cfg.dtype, name=name)(x)
    scale = (self.lora_scales or {}).get(target, 1.0)
    return add_lora(y, x.astype(cfg.dtype), slots, target, scale)

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, bias=None, mask=None, slots=None,
               deterministic: bool = True, decode: bool = False, fused_kv=None,
               kv_only: bool = False):
    """Attention of ``inputs_q`` over ``inputs_kv``.

    Args:
      inputs_q: ``[B, Lq, D]``.
      inputs_kv: ``[B, Lk, D]``.
      bias: additive position bias ``[B|1, H, Lq, Lk]`` or None. In decode mode
        ``[B|1, H, 1, max_len]``.
      mask: boolean ``[B|1, 1, Lq|1, Lk]`` (True = visible) or None. In decode mode
        the cache supplies the causal mask and ``mask`` is ignored.
      slots: this site's adaptation slot dict, or None.
      decode: single-step autoregressive decoding with the ``cache`` collection.
      fused_kv: ``(keys, values, mask)`` prepended to the projected keys/values
        (outside the decoding cache): keys/values ``[B?, Lf, H*K]`` already
        projected (with LoRA/IA3), mask ``[B?, Lf]`` boolean; or None.
      kv_only: return only the projected ``(keys, values)`` ``[B, Lk, H*K]`` of
        ``inputs_kv`` (``inputs_q`` is unused): what ``fused_kv`` expects.
    Returns:
      ``[B, Lq, D]``.
    """
    cfg = self.config
    h, dk, d = cfg.num_heads, cfg.d_kv, cfg.d_model
    hk = h * dk
    k = self._proj("key", inputs_kv, hk, ("embed", "joined_kv"), d ** -0.5, slots, "k")
    v = self._proj("value", inputs_kv, hk, ("embed", "joined_kv"), d ** -0.5,
                   slots, "v")
    k = ia3_scale(k, slots, "ia3_k")
    v = ia3_scale(v, slots, "ia3_v")
    if kv_only:
      return k, v
    q = self._proj("query", inputs_q, hk, ("embed", "joined_kv"),
                   (d * dk) ** -0.5, slots, "q")
    b = inputs_q.shape[0]
    q = q.reshape(q.shape[:2] + (h, dk))
    k = k.reshape(k.shape[:2] + (h, dk))
    v = v.reshape(v.shape[:2] + (h, dk))
    q = constrain(q, ("batch", "length", "heads", "kv"))
    k = constrain(k, ("batch", "length", "heads", "kv"))
    v = constrain(v, ("batch", "length", "heads", "kv"))

    if decode:
      is_initialized = self.has_variable("cache", "cached_key")
      cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape,
                                   v.dtype)
      cache_index = self.variable("cache", "cache_index",
                                  lambda: jnp.array(0, dtype=jnp.int32))
      if is_initialized:
        max_len = cached_key.value.shape[1]
        if q.shape[1] != 1:
          raise ValueError("Decoding takes one token per step; got length "
                           f"{q.shape[1]}.")
        idx = cache_index.value
        one_hot = jax.nn.one_hot(idx, max_len, dtype=k.dtype)[None, :, None, None]
        k = cached_key.value + one_hot * k
        v = cached_value.value + one_hot * v
        cached_key.value, cached_value.value = k, v
        cache_index.value = idx + 1
        mask = (jnp.arange(max_len) <= idx)[None, None, None, :]

    if fused_kv is not None:
      k, v, bias, mask = _with_fused(k, v, bias, mask, fused_kv, b, h, dk, cfg.dtype)
    pk, pv = prefix_kv(slots, b, h, dk, cfg.dtype)
    if pk is not None:
      if bias is None:
        bias = jnp.zeros((1, h, q.shape[1], k.shape[1]), cfg.dtype)
      k, v, bias, mask = with_prefix(k, v, bias, mask, pk, pv)

    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    if bias is not None:
      scores = scores + bias.astype(jnp.float32)
    if mask is not None:
      scores = jnp.where(mask, scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
    probs = nn.Dropout(cfg.dropout_rate)(probs, deterministic=deterministic)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, -1, hk)
    out = constrain(out, ("batch", "length", "joined_kv"))
    return self._proj("out", out, d, ("joined_kv", "embed"), hk ** -0.5, slots, "o")


def _with_fused(keys, values, bias, mask, fused_kv, batch, num_heads, head_dim, dtype):
  """Prepend precomputed keys/values with their own mask (zero bias on them).

  Args:
    keys, values: ``[B, Lk, H, K]``.
    bias: additive ``[B|1, H, Lq, Lk]`` or None.
    mask: boolean ``[B|1, 1, Lq|1, Lk]`` or None.
    fused_kv: ``(keys, values, mask)``: ``[B?, Lf, H*K]`` twice and ``[B?, Lf]``.
  Returns:
    keys, values ``[B, Lf + Lk, H, K]``; bias and mask extended by ``Lf`` columns.
  """
  fk, fv, fmask = fused_kv

  def heads(x):
    x = x.astype(dtype)
    if x.ndim == 2:  # per task
      x = jnp.broadcast_to(x[None], (batch,) + x.shape)
    return x.reshape(x.shape[:2] + (num_heads, head_dim))
  fk, fv = heads(fk), heads(fv)
  lf = fk.shape[1]
  keys = jnp.concatenate([fk, keys], axis=1)
  values = jnp.concatenate([fv, values], axis=1)
  if bias is not None:
    bias = jnp.concatenate([jnp.zeros(bias.shape[:-1] + (lf,), bias.dtype), bias],
                           axis=-1)
  fmask = fmask.astype(bool)
  fmask = fmask[None, None, None, :] if fmask.ndim == 1 else fmask[:, None, None, :]
  if mask is None:
    mask = jnp.ones((1, 1, 1, keys.shape[1] - lf), bool)
  lead = jnp.broadcast_shapes(mask.shape[:-1], fmask.shape[:-1])
  mask = jnp.concatenate([jnp.broadcast_to(fmask, lead + (lf,)),
                          jnp.broadcast_to(mask, lead + mask.shape[-1:])], axis=-1)
  return keys, values, bias, mask
