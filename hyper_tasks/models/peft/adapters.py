"""Parallel bottleneck adapters (He et al. 2022; HINT places them beside the MLP).

``out = sublayer(x) + relu(x @ down) @ up`` where ``x`` is the sublayer's normalised
input. Parallel rather than sequential placement keeps the adapter off the backbone's
critical path and makes ``up = 0`` exactly the identity.
"""
import jax

from hyper_tasks.models.adaptation import batched_matmul


def adapter_delta(x, slots):
  """The adapter's contribution, or None when the slot dict holds no adapter.

  Args:
    x: ``[B, L, D]`` normalised sublayer input.
    slots: dict that may hold ``adapter_down`` ``[B?, D, A]`` and ``adapter_up``
      ``[B?, A, D]``.
  Returns:
    ``[B, L, D]`` or None.
  """
  if not slots or "adapter_down" not in slots:
    return None
  h = jax.nn.relu(batched_matmul(x, slots["adapter_down"]))
  return batched_matmul(h, slots["adapter_up"])
