"""T5 backbone configuration: one frozen dataclass, passed whole, plus named presets.

Variants follow the public checkpoints:
  * ``t5``       original T5: ReLU MLP, tied input/output embeddings (logits scaled by
                 ``d_model ** -0.5`` as in Mesh TensorFlow / t5x).
  * ``t5_1_1``   T5.1.1 and T5-LM-adapt: gated-GELU MLP, untied ``logits_dense``.
  * ``mt5``      mT5: as T5.1.1 with a 250k vocabulary.
  * ``flan_t5``  Flan-T5: T5.1.1 architecture (the difference is in the weights).

Sizes are the published ones; ``tiny`` is a CPU-test size.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax.numpy as jnp
from hyper_tasks.choices import check_choice


REMAT_POLICIES = ("none", "minimal", "full")
ATTENTION_IMPLS = ("ours", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture of a T5 encoder-decoder."""
  vocab_size: int = 32128
  d_model: int = 512
  num_heads: int = 8
  d_kv: int = 64
  d_ff: int = 2048
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  # "relu" (original T5) or "gated-gelu" (T5.1.1) or "gated-relu"/"gelu".
  feed_forward_proj: str = "gated-gelu"
  tie_word_embeddings: bool = False
  # Multiply decoder outputs by d_model ** -0.5 before the vocabulary projection.
  # None: as the reference does, exactly when embeddings are tied. (transformers 5
  # decouples the two: its from-scratch T5.1.1 configs tie but do not scale.)
  scale_decoder_outputs: Optional[bool] = None
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dropout_rate: float = 0.1
  # Longest sequence (instruction, input or target) the model is configured for;
  # None: no limit (relative positions). Checked by ``--check`` and the trainer.
  max_sequence_length: Optional[int] = None
  # Computation dtype; parameters always stay float32.
  dtype: Any = jnp.float32
  # Rematerialisation of each encoder/decoder layer in the backward pass (see
  # ``REMAT_POLICIES``): "none" keeps every activation, "minimal" keeps only the
  # outputs of the weight matmuls (``dots_with_no_batch_dims_saveable``), "full"
  # keeps only each layer's inputs. Gradients are the same; memory and time differ.
  remat_policy: str = "none"
  # One ``nn.scan`` over each stack's layers (MaxText's ``scan_layers``): the
  # parameters of ``layers_0 .. layers_{L-1}`` become one ``layers`` subtree with a
  # leading axis (logical name "layers"), compiled once per stack, so compile time
  # hardly grows with depth. Same outputs and gradients. Plain T5 only (generated
  # per-layer adaptations are not scanned yet: a clear error).
  scan_layers: bool = False
  # Attention kernel (see ``ATTENTION_IMPLS``): "ours" (einsums + softmax), "xla"
  # (``jax.nn.dot_product_attention`` lowered by XLA), "cudnn" (its cuDNN fused
  # kernel on GPU; falls back to "ours", logged with the reason, where its
  # constraints do not hold). Parameters are the same for all three.
  attention_impl: str = "ours"
  pad_id: int = 0
  eos_id: int = 1
  decoder_start_id: int = 0

  def __post_init__(self):
    check_choice("remat_policy", self.remat_policy, REMAT_POLICIES)
    check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.d_kv

  @property
  def scales_logits(self) -> bool:
    if self.scale_decoder_outputs is None:
      return self.tie_word_embeddings
    return self.scale_decoder_outputs

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated")

  @property
  def activation(self) -> str:
    return self.feed_forward_proj.split("-")[-1]

  def replace(self, **kwargs) -> "T5Config":
    return dataclasses.replace(self, **kwargs)


# size: ((d_model, num_heads, d_kv, d_ff, layers) of T5, the same of T5.1.1 and the
# families built on it: mT5, FLAN-T5, T5-LM-adapt).
_SIZES = {
    "tiny": ((32, 4, 8, 64, 2), (32, 4, 8, 64, 2)),
    "small": ((512, 8, 64, 2048, 6), (512, 6, 64, 1024, 8)),
    "base": ((768, 12, 64, 3072, 12), (768, 12, 64, 2048, 12)),
    "large": ((1024, 16, 64, 4096, 24), (1024, 16, 64, 2816, 24)),
    "xl": ((1024, 32, 128, 16384, 24), (2048, 32, 64, 5120, 24)),
    "xxl": ((1024, 128, 128, 65536, 24), (4096, 64, 64, 10240, 24)),
}
_VARIANTS = {
    "t5": dict(feed_forward_proj="relu", tie_word_embeddings=True,
               vocab_size=32128),
    "t5_1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   vocab_size=32128),
    "mt5": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                vocab_size=250112),
    "flan_t5": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    vocab_size=32128),
}
SIZES = tuple(_SIZES)
VARIANTS = tuple(_VARIANTS)


def preset(variant: str = "t5_1_1", size: str = "base", **overrides) -> T5Config:
  """A named configuration, e.g. ``preset("t5_1_1", "base")``.

  Raises:
    ValueError: naming the unknown variant or size.
  """
  check_choice("T5 variant", variant, VARIANTS)
  check_choice("T5 size", size, SIZES)
  d_model, heads, d_kv, d_ff, layers = _SIZES[size][0 if variant == "t5" else 1]
  kwargs = dict(_VARIANTS[variant], d_model=d_model, num_heads=heads, d_kv=d_kv,
                d_ff=d_ff, num_encoder_layers=layers, num_decoder_layers=layers)
  if size == "tiny":
    kwargs["vocab_size"] = 512
  kwargs.update(overrides)
  return T5Config(**kwargs)
