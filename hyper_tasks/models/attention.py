"""T5 multi-head attention with PEFT hook points and a key/value decoding cache.

Hooks, all driven by the slot dict of an ``Adaptation`` (None = plain T5):
  * LoRA deltas on the q/k/v/o projections (``lora_<t>_a``, ``lora_<t>_b``);
  * IA3 scaling of keys and values (``ia3_k``, ``ia3_v``);
  * key/value prefixes (``prefix_key``, ``prefix_value``), outside the cache;
  * fused keys/values: precomputed, masked keys/values prepended to the projected
    ones (instruction fusion's per-task cross-attention keys, see ``Adaptation``).
T5 does not scale ``q k^T`` by ``1/sqrt(d_kv)``: the scaling lives in the init.

``T5Config.attention_impl`` picks the kernel for ``softmax(q k^T + bias) v``:
"ours" (einsums, the reference), "xla" (``jax.nn.dot_product_attention`` lowered
by XLA: the same numbers, ``scale=1.0``, bias and boolean mask passed through) or
"cudnn" (its cuDNN flash kernel on GPU). The fused kernels do not apply dropout to
the attention probabilities, so a training step with dropout runs "ours" instead;
cuDNN also needs a GPU, bfloat16/float16, ``d_kv`` a multiple of 8 up to 128, a
bias shared over the batch (``[1, H, T, S]``) and no mask other than key padding
(sent as key lengths: padding must be at the end, as this pipeline writes it).
Every fallback is logged once per setting and reason, naming the setting.
"""
from __future__ import annotations

import logging
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
_LOGGED: set = set()


def _fallback(impl: str, reason: str) -> str:
  """Log (once per setting and reason) that ``impl`` runs as "ours"; "ours"."""
  if (impl, reason) not in _LOGGED:
    _LOGGED.add((impl, reason))
    logging.warning("attention_impl=%r falls back to 'ours': %s.", impl, reason)
  return "ours"


def choose_impl(cfg: T5Config, q, bias, mask, deterministic: bool) -> str:
  """The kernel that runs this attention: ``cfg.attention_impl`` or "ours" (logged).

  ``q`` is ``[B, T, H, K]``; ``bias``/``mask`` as in ``MultiHeadAttention``.
  """
  impl = cfg.attention_impl
  if impl == "ours":
    return impl
  if not deterministic and cfg.dropout_rate > 0:
    return _fallback(impl, f"fused attention applies no dropout to the attention "
                     f"probabilities (dropout_rate={cfg.dropout_rate} in training)")
  if impl == "xla":
    return impl
  backend = jax.default_backend()
  if backend not in ("gpu", "cuda"):
    return _fallback(impl, f"cuDNN attention needs a GPU (backend is {backend!r})")
  if jnp.dtype(cfg.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return _fallback(impl, f"cuDNN attention needs bfloat16 or float16 (dtype is "
                     f"{jnp.dtype(cfg.dtype).name})")
  if q.shape[-1] % 8 or q.shape[-1] > 128:
    return _fallback(impl, f"cuDNN attention needs d_kv a multiple of 8 up to 128 "
                     f"(d_kv={q.shape[-1]})")
  if bias is not None and bias.shape[0] != 1:
    return _fallback(impl, f"cuDNN attention needs a bias [1, H, T, S] (got "
                     f"{tuple(bias.shape)})")
  if mask is not None and (mask.shape[1] != 1 or mask.shape[2] != 1):
    return _fallback(impl, f"cuDNN attention takes key padding only (mask "
                     f"{tuple(mask.shape)}: causal, packed or per-query)")
  return impl


def fused_attention(q, k, v, bias, mask, impl: str):
  """``softmax(q k^T + bias, masked) v`` by ``jax.nn.dot_product_attention``.

  ``q`` ``[B, T, H, K]``, ``k``/``v`` ``[B, S, H, K]``; returns ``[B, T, H, K]``.
  """
  kwargs = {}
  if impl == "cudnn" and mask is not None:
    # Key padding [B|1, 1, 1, S] -> key lengths (padding at the end).
    lengths = jnp.sum(mask[:, 0, 0, :].astype(jnp.int32), axis=-1)
    kwargs["key_value_seq_lengths"] = jnp.broadcast_to(lengths, (q.shape[0],))
    mask = None
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=1.0,
                                      implementation=impl, **kwargs)


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

    impl = choose_impl(cfg, q, bias, mask, deterministic)
    if impl != "ours":
      out = fused_attention(q, k, v, bias, mask, impl).reshape(b, -1, hk)
    else:
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
