"""Hypernetworks: encoded instruction ``[B, Lh, D]`` -> PEFT slot tree ``[B, ...]``.

Each is a flax module that :class:`~hyper_tasks.models.transformer.Transformer`
holds as its ``hypernet`` attribute, so its parameters live under ``hypernet/``
(and a separate instruction encoder, if any, under ``hypernet/encoder/``). Called as
``hypernet(h, mask, deterministic=...)`` it returns exactly the nested dict that
``spec.slots(cfg)`` describes, each leaf with a leading batch axis.

  ``hint``       HINT: learned component queries cross-attend to the instruction
                 tokens; MLP head per parameter type; every PEFT method.
  ``hypter``     Hypter: mean-pooled instruction, per-layer MLPs; adapters.
  ``hypertune``  HyperTune/HyperT5: small decoder over learned queries; prefixes
                 and LoRA.
  ``t2l``        Text-to-LoRA: pooled task + layer + module embeddings, shared MLP;
                 LoRA.
  ``none``       no hypernetwork (plain T5, concatenated-instruction baseline, static
                 PEFT): :func:`make_hypernet` returns None.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from hyper_tasks.models.config import T5Config
from hyper_tasks.models.hypernets.common import HypernetBase, check_spec, masked_mean_pool
from hyper_tasks.models.hypernets.hint import Hint
from hyper_tasks.models.hypernets.hypertune import HyperTune
from hyper_tasks.models.hypernets.hypter import Hypter
from hyper_tasks.models.hypernets.t2l import TextToLora
from hyper_tasks.models.peft_spec import PeftSpec
from hyper_tasks.choices import check_choice

HYPERNETS = {"hint": Hint, "hypter": Hypter, "hypertune": HyperTune,
             "t2l": TextToLora}
NAMES = tuple(HYPERNETS) + ("none",)

__all__ = ["HYPERNETS", "NAMES", "Hint", "Hypter", "HyperTune", "TextToLora",
           "HypernetBase", "make_hypernet", "check_spec", "masked_mean_pool"]


def make_hypernet(name: str, config: T5Config, spec: PeftSpec,
                  **kwargs) -> Optional[HypernetBase]:
  """The hypernetwork called ``name`` for a backbone ``config`` and PEFT ``spec``.

  Args:
    name: one of :data:`NAMES`.
    config: backbone configuration.
    spec: the slots to generate.
    **kwargs: module fields (``hidden_dim``, ``mlp_dim``, ``num_heads``,
      ``dropout_rate``, ``output_scale``, ``small_init``, ``separate_encoder``,
      ``encoder_layers``, and per hypernetwork: hint ``query_method``; hypter
      ``layer_embedding``; hypertune ``num_layers``; t2l ``layer_embedding``,
      ``num_blocks``).
  Returns:
    An unbound flax module, or None for ``"none"``.
  Raises:
    ValueError: unknown name or field, or a spec the hypernetwork cannot produce.
  """
  if name == "none":
    if kwargs:
      raise ValueError(f"hypernet 'none' takes no options; got {sorted(kwargs)}.")
    return None
  check_choice("hypernet", name, NAMES)
  cls = HYPERNETS[name]
  fields = {f.name for f in dataclasses.fields(cls)} - {"config", "spec", "parent",
                                                       "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"hypernet {name!r}: unknown option(s) {unknown}; "
                     f"allowed {sorted(fields)}.")
  check_spec(name, spec, config, cls.SUPPORTED, cls.ADAPTER_BIAS)
  return cls(config=config, spec=spec, **kwargs)
