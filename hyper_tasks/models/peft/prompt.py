"""Prompt tuning (Lester et al. 2021): embeddings prepended to the encoder input."""
import jax.numpy as jnp


def prepend_prompt(x, mask, adaptation):
  """Prepend ``prompt/embedding`` ``[B?, P, D]`` to embedded inputs.

  Args:
    x: ``[B, L, D]`` embedded encoder input.
    mask: ``[B, L]`` boolean.
  Returns:
    ``x [B, P+L, D]``, ``mask [B, P+L]`` (unchanged when there is no prompt).
  """
  p = None if adaptation is None else adaptation.get("prompt", "embedding")
  if p is None:
    return x, mask
  p = p.astype(x.dtype)
  if p.ndim == 2:
    p = jnp.broadcast_to(p[None], (x.shape[0],) + p.shape)
  ones = jnp.ones(p.shape[:2], bool)
  return jnp.concatenate([p, x], axis=1), jnp.concatenate([ones, mask], axis=1)
