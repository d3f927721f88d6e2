"""Learned (static) PEFT parameters under ``peft/``: one tensor per slot of the spec.

The static baselines (per-task or multi-task adapters/prefixes/LoRA/prompt/IA3) use
exactly the layers the hypernetworks feed; only the source of the tensors differs.
Initialisation makes the untrained model equal plain T5 (zero ``up``/``B``/IA3 and
adapter biases) while keeping gradients alive (non-zero ``down``/``A``/prefixes/
prompt).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from hyper_tasks.models.config import T5Config
from hyper_tasks.models.peft_spec import PeftSpec, Slot

ZERO_INIT = ("adapter_up", "adapter_down_bias", "adapter_up_bias", "ia3_k", "ia3_v",
             "ia3_ff")


def slot_init(slot: Slot):
  """The initialiser that makes a fresh slot the identity where possible."""
  if slot.name in ZERO_INIT or (slot.name.startswith("lora_") and
                                slot.name.endswith("_b")):
    return nn.initializers.zeros
  if slot.name == "prompt":
    return nn.initializers.normal(0.5)
  return nn.initializers.normal(slot.shape[0] ** -0.5)


def set_path(tree: dict, path, value):
  """``tree[p0][p1]...[pn] = value``, creating dicts on the way."""
  node = tree
  for key in path[:-1]:
    node = node.setdefault(key, {})
  node[path[-1]] = value


class StaticPeft(nn.Module):
  """Holds one learned tensor per slot; returns the slot tree (no batch axis)."""
  config: T5Config
  spec: PeftSpec

  @nn.compact
  def __call__(self) -> dict:
    tree: dict = {}
    for slot in self.spec.slots(self.config):
      name = "/".join(slot.path)
      value = self.param(name.replace("/", "."),
                         nn.with_logical_partitioning(slot_init(slot), slot.axes),
                         slot.shape, jnp.float32)
      set_path(tree, slot.path, value)
    return tree
