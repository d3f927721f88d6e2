"""Parallel bottleneck adapters (He et al. 2022; HINT places them beside the MLP).

``out = sublayer(x) + act(x @ down + down_bias) @ up + up_bias`` where ``x`` is the
sublayer's normalised input; the biases are optional slots (absent = zero) and
``act`` is ReLU or GELU (:data:`~hyper_tasks.models.peft_spec.ADAPTER_ACTIVATIONS`).
HINT's generated adapters have both biases and GELU (tanh approximation). Parallel
rather than sequential placement keeps the adapter off the backbone's critical path
and makes ``up = 0`` (with ``up_bias = 0``) exactly the identity.
"""
import jax

from hyper_tasks.models.adaptation import batched_matmul, expand_like


def activation(name: str):
  """The adapter activation ``name``: ``relu`` or ``gelu`` (tanh approximation)."""
  if name == "relu":
    return jax.nn.relu
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=True)
  raise ValueError(f"Unknown adapter activation {name!r}; use 'relu' or 'gelu'.")


def adapter_delta(x, slots, act: str = "relu"):
  """The adapter's contribution, or None when the slot dict holds no adapter.

  Args:
    x: ``[B, L, D]`` normalised sublayer input.
    slots: dict that may hold ``adapter_down`` ``[B?, D, A]`` and ``adapter_up``
      ``[B?, A, D]``, optionally with ``adapter_down_bias`` ``[B?, A]`` and
      ``adapter_up_bias`` ``[B?, D]``.
    act: the activation between the projections (``relu`` | ``gelu``).
  Returns:
    ``[B, L, D]`` or None.
  """
  if not slots or "adapter_down" not in slots:
    return None
  h = batched_matmul(x, slots["adapter_down"])
  if "adapter_down_bias" in slots:
    h = h + expand_like(slots["adapter_down_bias"], h)
  out = batched_matmul(activation(act)(h), slots["adapter_up"])
  if "adapter_up_bias" in slots:
    out = out + expand_like(slots["adapter_up_bias"], out)
  return out
