"""Key/value prefixes (Li & Liang 2021) in projected head space.

Prefix keys/values are prepended to every query's key set. They get no relative
position bias and are never masked (always visible, also to causal decoder queries),
and they sit outside the decoding cache: each step concatenates them again, which is
cheap (P tokens) and keeps the cache shape independent of the adaptation.
"""
import jax.numpy as jnp


def prefix_kv(slots, batch: int, num_heads: int, head_dim: int, dtype):
  """Prefix keys and values as ``[B, P, H, K]`` each, or ``(None, None)``.

  Args:
    slots: dict possibly holding ``prefix_key``/``prefix_value`` ``[B?, P, H*K]``.
  """
  if not slots or "prefix_key" not in slots:
    return None, None
  out = []
  for name in ("prefix_key", "prefix_value"):
    p = slots[name].astype(dtype)
    if p.ndim == 2:
      p = jnp.broadcast_to(p[None], (batch,) + p.shape)
    out.append(p.reshape(p.shape[:2] + (num_heads, head_dim)))
  return tuple(out)


def with_prefix(keys, values, bias, mask, prefix_k, prefix_v):
  """Prepend prefixes to keys/values and extend the additive bias and boolean mask.

  Args:
    keys, values: ``[B, Lk, H, K]``.
    bias: additive ``[B|1, H|1, Lq, Lk]`` or None.
    mask: boolean ``[B|1, 1|H, Lq|1, Lk]`` or None.
    prefix_k, prefix_v: ``[B, P, H, K]``.
  Returns:
    keys, values ``[B, P + Lk, H, K]``, bias and mask extended by ``P`` always-visible
    columns with zero bias.
  """
  p = prefix_k.shape[1]
  keys = jnp.concatenate([prefix_k, keys], axis=1)
  values = jnp.concatenate([prefix_v, values], axis=1)
  if bias is not None:
    pad = jnp.zeros(bias.shape[:-1] + (p,), bias.dtype)
    bias = jnp.concatenate([pad, bias], axis=-1)
  if mask is not None:
    ones = jnp.ones(mask.shape[:-1] + (p,), bool)
    mask = jnp.concatenate([ones, mask], axis=-1)
  return keys, values, bias, mask
