"""IA3 (Liu et al. 2022): learned/generated rescaling of keys, values and MLP hidden.

We scale by ``1 + v`` rather than ``v`` so that a zero tensor is the identity, the same
convention as every other method here (a hypernetwork emitting zeros = plain T5).
"""
from hyper_tasks.models.adaptation import expand_like


def ia3_scale(x, slots, name: str):
  """``x * (1 + slots[name])`` broadcast over ``[B, L, F]``; ``x`` if absent."""
  if not slots or name not in slots:
    return x
  return x * (1.0 + expand_like(slots[name], x))
