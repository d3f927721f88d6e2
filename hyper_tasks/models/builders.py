"""The one place gin builds models: PEFT spec, backbone config, the whole model.

All three are ``@gin.configurable(module="hyper_tasks.models")``; gin files refer to
them as ``models.make_peft_spec``, ``models.make_t5_config`` and ``models.make_model``::

    MODEL = @models.make_model()
    models.make_model.size = %MODEL_SIZE
    models.make_model.peft_spec = @models.make_peft_spec()
    models.make_peft_spec.adapter_size = %ADAPTER_SIZE

A size of 0 switches a PEFT method off, so a sweep can drop a method from the
command line (``--gin.NUM_PREFIX_TOKENS=0``).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import gin
import jax
import jax.numpy as jnp

from hyper_tasks.models import config as config_lib
from hyper_tasks.models.hypernets import make_hypernet
from hyper_tasks.models.model_api import EncoderDecoderModel
from hyper_tasks.models.peft_spec import (ATTENTION_SITES, IA3_TARGETS, AdapterSpec,
                                          IA3Spec, LoraSpec, PeftSpec, PrefixSpec,
                                          PromptSpec)
from hyper_tasks.models.transformer import Transformer
from hyper_tasks.choices import check_choice

_GIN_MODULE = "hyper_tasks.models"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ACCELERATOR_COMPUTE_DTYPE = "bfloat16"


def _size(name: str, value) -> int:
  if value is None:
    return 0
  if not isinstance(value, int) or isinstance(value, bool) or value < 0:
    raise ValueError(f"make_peft_spec: {name} must be an integer >= 0 "
                     f"(0 = off); got {value!r}.")
  return value


def _tuple(name: str, value) -> tuple:
  if isinstance(value, str):
    raise ValueError(f"make_peft_spec: {name} must be a sequence of names, got the "
                     f"string {value!r} (write ({value!r},) for one).")
  return tuple(value)


@gin.configurable(module=_GIN_MODULE)
def make_peft_spec(adapter_size: int = 0,
                   adapter_sites: Sequence[str] = ("encoder_mlp", "decoder_mlp"),
                   adapter_bias: bool = False,
                   adapter_activation: str = "relu",
                   num_prefix_tokens: int = 0,
                   prefix_sites: Sequence[str] = ATTENTION_SITES,
                   lora_rank: int = 0,
                   lora_targets: Sequence[str] = ("q", "v"),
                   lora_sites: Sequence[str] = ATTENTION_SITES,
                   lora_alpha: Optional[float] = None,
                   prompt_tokens: int = 0,
                   ia3: bool = False,
                   ia3_targets: Sequence[str] = IA3_TARGETS) -> PeftSpec:
  """A :class:`PeftSpec` from flat settings; a size of 0 (or ``ia3=False``) = off.

  Args:
    adapter_size: bottleneck width of parallel adapters at ``adapter_sites``;
      ``adapter_bias`` adds down/up biases and ``adapter_activation`` is ``relu`` or
      ``gelu`` (HINT: biases and GELU, ``gin/peft/hint_default.gin``).
    num_prefix_tokens: key/value prefix length at ``prefix_sites``.
    lora_rank: rank of LoRA on every target in ``lora_targets`` (q, k, v, o, wi,
      wo) at ``lora_sites``; ``lora_alpha`` sets the ``alpha / r`` scale (None: 1).
    prompt_tokens: prompt-tuning length.
    ia3: IA3 scaling of ``ia3_targets`` (k, v, ff).
  Raises:
    ValueError: a negative or non-integer size, or unknown sites/targets.
  """
  adapter_size = _size("adapter_size", adapter_size)
  num_prefix_tokens = _size("num_prefix_tokens", num_prefix_tokens)
  lora_rank = _size("lora_rank", lora_rank)
  prompt_tokens = _size("prompt_tokens", prompt_tokens)
  return PeftSpec(
      adapter=(AdapterSpec(adapter_size, _tuple("adapter_sites", adapter_sites),
                           bool(adapter_bias), adapter_activation)
               if adapter_size else None),
      prefix=(PrefixSpec(num_prefix_tokens, _tuple("prefix_sites", prefix_sites))
              if num_prefix_tokens else None),
      lora=(LoraSpec(tuple((t, lora_rank) for t in _tuple("lora_targets",
                                                          lora_targets)),
                     _tuple("lora_sites", lora_sites), lora_alpha)
            if lora_rank else None),
      prompt=PromptSpec(prompt_tokens) if prompt_tokens else None,
      ia3=IA3Spec(_tuple("ia3_targets", ia3_targets)) if ia3 else None)


def resolve_compute_dtype(dtype: Optional[str],
                          backend: Optional[str] = None) -> Optional[str]:
  """``"auto"`` -> bfloat16 on GPU/TPU, None (the preset's float32) on CPU; any
  other value as given. Parameters and optimizer state stay float32 either way."""
  if dtype != "auto":
    return dtype
  backend = jax.default_backend() if backend is None else backend
  return ACCELERATOR_COMPUTE_DTYPE if backend in ("gpu", "tpu", "cuda",
                                                  "rocm") else None


def _dtype(dtype: Any):
  if isinstance(dtype, str):
    check_choice("dtype", dtype, sorted(_DTYPES))
    return _DTYPES[dtype]
  return dtype


@gin.configurable(module=_GIN_MODULE)
def make_t5_config(variant: str = "t5_1_1", size: str = "tiny",
                   **overrides) -> config_lib.T5Config:
  """``config.preset(variant, size)`` with overrides; None overrides are ignored and
  ``dtype`` may be a string ("float32", "bfloat16")."""
  overrides = {k: v for k, v in overrides.items() if v is not None}
  if "dtype" in overrides:
    overrides["dtype"] = _dtype(overrides["dtype"])
  return config_lib.preset(variant, size, **overrides)


@gin.configurable(module=_GIN_MODULE)
def make_model(variant: str = "t5_1_1", size: str = "tiny", hypernet: str = "hint",
               peft_spec: Optional[PeftSpec] = None,
               instruction_fusion: bool = False, static_peft: bool = False,
               no_instruction: bool = False, dtype: str = "float32",
               vocab_size: Optional[int] = None,
               dropout_rate: Optional[float] = None, z_loss: float = 1e-4,
               label_smoothing: float = 0.0,
               loss_normalizing_factor: Any = "num_real_target_tokens",
               hypernet_kwargs: Optional[dict] = None,
               config_overrides: Optional[dict] = None,
               remat_policy: Optional[str] = None,
               attention_impl: Optional[str] = None,
               scan_layers: Optional[bool] = None) -> EncoderDecoderModel:
  """A (hyper-)T5 wrapped in the t5x-like model API.

  Args:
    variant, size: backbone preset (``config.preset``); ``vocab_size``,
      ``dropout_rate`` and ``dtype`` override it. ``dtype`` is the computation
      dtype, the run's one dtype knob: "float32", "bfloat16", or "auto"
      (bfloat16 on GPU/TPU, float32 on CPU; :func:`resolve_compute_dtype`);
      parameters and optimizer state stay float32 either way.
    hypernet: "hint" | "hypter" | "hypertune" | "t2l" | "none".
    peft_spec: the generated (or learned) slots; None = no PEFT.
    instruction_fusion: decoder also cross-attends to the encoded instruction.
    static_peft: learn the spec's slots under ``peft/`` (needs hypernet="none").
    no_instruction: control: the hypernetwork always sees a fixed instruction.
    z_loss, label_smoothing, loss_normalizing_factor: the loss, as t5x's
      ``EncoderDecoderModel`` (see :class:`EncoderDecoderModel`; t5x's ``None``
      sums the token losses, which is HINT's setting).
    hypernet_kwargs: options for :func:`~hyper_tasks.models.hypernets.make_hypernet`.
    config_overrides: further ``T5Config`` fields (e.g. ``num_encoder_layers``).
    remat_policy: per-layer rematerialisation, "none" | "minimal" | "full"
      (``T5Config.remat_policy``; None: the config's, "none").
    scan_layers: one ``nn.scan`` over each stack's layers (``T5Config.scan_layers``;
      None: the config's, False); plain T5 only for now.
    attention_impl: "ours" | "xla" | "cudnn" (``T5Config.attention_impl``; None:
      the config's, "ours").
  Raises:
    ValueError: for inconsistent combinations, naming them.
  """
  overrides = dict(config_overrides or {})
  for key, value in (("remat_policy", remat_policy),
                     ("attention_impl", attention_impl),
                     ("scan_layers", scan_layers)):
    if value is not None:
      if key in overrides and overrides[key] != value:
        raise ValueError(f"make_model: {key}={value!r} contradicts "
                         f"config_overrides[{key!r}]={overrides[key]!r}.")
      overrides[key] = value
  cfg = make_t5_config(variant, size, **overrides, vocab_size=vocab_size,
                       dropout_rate=dropout_rate,
                       dtype=resolve_compute_dtype(dtype))
  spec = peft_spec if peft_spec is not None else PeftSpec()
  if not isinstance(spec, PeftSpec):
    raise ValueError(f"make_model: peft_spec must be a PeftSpec (e.g. "
                     f"@models.make_peft_spec()), got {type(spec).__name__}.")
  net = make_hypernet(hypernet, cfg, spec, **dict(hypernet_kwargs or {}))
  if net is None:
    if instruction_fusion:
      raise ValueError("make_model: instruction_fusion needs a hypernetwork "
                       "(hypernet='none' reads no instruction).")
    if no_instruction:
      raise ValueError("make_model: no_instruction is a control for a "
                       "hypernetwork; hypernet='none' reads no instruction anyway.")
    if not spec.is_empty and not static_peft:
      raise ValueError("make_model: a PEFT spec with hypernet='none' needs "
                       "static_peft=True (nothing else would produce its slots).")
  elif static_peft:
    raise ValueError(f"make_model: static_peft=True learns the slots directly; it "
                     f"cannot be combined with hypernet={hypernet!r}.")
  module = Transformer(cfg, spec, net, static_peft=static_peft,
                       instruction_fusion=instruction_fusion,
                       no_instruction=no_instruction)
  return EncoderDecoderModel(module, z_loss=z_loss, label_smoothing=label_smoothing,
                             loss_normalizing_factor=loss_normalizing_factor)
