"""LoRA deltas computed as ``(x @ A) @ B * scale``.

Computing through the rank-``r`` bottleneck, never forming ``A @ B``, is what lets a
per-example LoRA (a different ``A, B`` per batch row) cost ``O(B L D r)`` instead of a
per-example ``[B, D, D']`` kernel.
"""
from hyper_tasks.models.adaptation import batched_matmul


def lora_delta(x, slots, target: str, scale: float = 1.0):
  """``x @ A @ B * scale`` for ``lora_<target>_{a,b}`` in ``slots``, else None.

  Args:
    x: ``[B, L, Din]``.
    slots: dict possibly holding ``lora_<target>_a`` ``[B?, Din, r]`` and
      ``lora_<target>_b`` ``[B?, r, Dout]``.
  Returns:
    ``[B, L, Dout]`` or None.
  """
  if not slots or f"lora_{target}_a" not in slots:
    return None
  h = batched_matmul(x, slots[f"lora_{target}_a"])
  out = batched_matmul(h, slots[f"lora_{target}_b"])
  return out * scale if scale != 1.0 else out


def add_lora(y, x, slots, target: str, scale: float = 1.0):
  """``y + lora_delta(...)`` (``y`` unchanged when there is no LoRA on ``target``)."""
  d = lora_delta(x, slots, target, scale)
  return y if d is None else y + d.astype(y.dtype)
