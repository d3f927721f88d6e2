"""The typed PEFT spec: which methods apply where, and the shape of every slot.

A :class:`PeftSpec` is a frozen dataclass of optional per-method specs. ``slots(cfg)``
enumerates every parameter the spec needs, deterministically as (stack, layer, site),
with its shape and logical axis names. Hypernetworks emit, and learned ``peft/``
parameters hold, exactly the nested dict ``spec.tree(cfg)`` describes::

    {"encoder": {"layers_0": {"attention": {"prefix_key": [P, H*K], ...},
                              "mlp": {"adapter_down": [D, A], ...}}},
     "decoder": {"layers_0": {"self_attention": {...},
                              "encoder_decoder_attention": {...}, "mlp": {...}}},
     "prompt": {"embedding": [P, D]}}

Generated tensors may carry a leading batch axis (per example) or not (per task).
Every method is written so that an all-zero tensor is the identity: adapters, LoRA and
prefix values add, IA3 scales by ``1 + v``, and a zero-length prefix or prompt is empty.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from hyper_tasks.models.config import T5Config

ATTENTION_SITES = ("encoder_self", "decoder_self", "cross")
# Site name -> (stack, module name inside the layer), as in t5x's parameter tree.
_SITE_MODULE = {
    "encoder_self": ("encoder", "attention"),
    "decoder_self": ("decoder", "self_attention"),
    "cross": ("decoder", "encoder_decoder_attention"),
    "encoder_mlp": ("encoder", "mlp"),
    "decoder_mlp": ("decoder", "mlp"),
}
ADAPTER_SITES = ("encoder_mlp", "decoder_mlp", "encoder_self", "decoder_self", "cross")
# ``gelu`` is the tanh approximation (flax ``nn.gelu``'s default, which HINT's adapters
# use).
ADAPTER_ACTIVATIONS = ("relu", "gelu")
LORA_TARGETS = ("q", "k", "v", "o", "wi", "wo")
IA3_TARGETS = ("k", "v", "ff")


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
  """Parallel bottleneck adapters beside a sublayer:
  ``out += act(x @ down [+ down_bias]) @ up [+ up_bias]``.

  ``sites``: MLP sublayers (``encoder_mlp``, ``decoder_mlp``) and, optionally, attention
  sublayers (``encoder_self``, ``decoder_self``, ``cross``). ``bias`` adds the slots
  ``adapter_down_bias [A]`` and ``adapter_up_bias [D]``; ``activation`` is one of
  :data:`ADAPTER_ACTIVATIONS`. HINT's adapters have both biases and GELU
  (``gin/peft/hint_default.gin``); the defaults here are bias-free ReLU.
  """
  size: int = 64
  sites: tuple[str, ...] = ("encoder_mlp", "decoder_mlp")
  bias: bool = False
  activation: str = "relu"

  def __post_init__(self):
    _check_subset("AdapterSpec.sites", self.sites, ADAPTER_SITES)
    _check_subset("AdapterSpec.activation", (self.activation,), ADAPTER_ACTIVATIONS)


@dataclasses.dataclass(frozen=True)
class PrefixSpec:
  """Key/value prefixes (in projected head space) for the named attention sites."""
  num_tokens: int = 30
  sites: tuple[str, ...] = ATTENTION_SITES

  def __post_init__(self):
    _check_subset("PrefixSpec.sites", self.sites, ATTENTION_SITES)


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """Low-rank deltas ``x @ A @ B * alpha / r`` on projections.

  ``ranks``: (target, rank) pairs, targets among q, k, v, o (attention) and wi, wo
  (MLP; ``wi`` covers ``wi_0`` and ``wi_1`` of gated MLPs). ``sites``: which attention
  sites get the attention targets; MLP targets apply to both stacks when any site of
  that stack is listed.
  """
  ranks: tuple[tuple[str, int], ...] = (("q", 8), ("v", 8))
  sites: tuple[str, ...] = ATTENTION_SITES
  alpha: Optional[float] = None  # None: scale 1 (generated B absorbs it).

  def __post_init__(self):
    _check_subset("LoraSpec targets", tuple(t for t, _ in self.ranks), LORA_TARGETS)
    _check_subset("LoraSpec.sites", self.sites, ATTENTION_SITES)

  def scale(self, rank: int) -> float:
    return 1.0 if self.alpha is None else self.alpha / rank


@dataclasses.dataclass(frozen=True)
class PromptSpec:
  """Prompt tuning: ``num_tokens`` embeddings prepended to the encoder input."""
  num_tokens: int = 20


@dataclasses.dataclass(frozen=True)
class IA3Spec:
  """IA3: keys, values (all attention sites) and MLP hidden scaled by ``1 + v``."""
  targets: tuple[str, ...] = IA3_TARGETS

  def __post_init__(self):
    _check_subset("IA3Spec.targets", self.targets, IA3_TARGETS)


@dataclasses.dataclass(frozen=True)
class Slot:
  """One generated tensor: where it goes, its shape and logical axes."""
  path: tuple[str, ...]          # e.g. ("encoder", "layers_0", "mlp", "adapter_down")
  stack: str                     # "encoder" | "decoder" | "prompt"
  layer: int                     # -1 for the prompt
  site: str                      # e.g. "encoder_mlp", "cross", "prompt"
  name: str                      # parameter type, e.g. "adapter_down"
  shape: tuple[int, ...]
  axes: tuple[str, ...]          # logical axis names, one per dimension

  @property
  def size(self) -> int:
    n = 1
    for s in self.shape:
      n *= s
    return n


@dataclasses.dataclass(frozen=True)
class PeftSpec:
  """Which PEFT methods apply, with their settings. All ``None`` is plain T5."""
  adapter: Optional[AdapterSpec] = None
  prefix: Optional[PrefixSpec] = None
  lora: Optional[LoraSpec] = None
  prompt: Optional[PromptSpec] = None
  ia3: Optional[IA3Spec] = None

  @property
  def is_empty(self) -> bool:
    return not any((self.adapter, self.prefix, self.lora, self.prompt, self.ia3))

  def slots(self, cfg: T5Config) -> list[Slot]:
    """Every tensor the spec needs, in a fixed order (stack, layer, site, name)."""
    out: list[Slot] = []
    d, hk, ff = cfg.d_model, cfg.inner_dim, cfg.d_ff
    stacks = (("encoder", cfg.num_encoder_layers, ("encoder_self", "encoder_mlp")),
              ("decoder", cfg.num_decoder_layers,
               ("decoder_self", "cross", "decoder_mlp")))
    for stack, n_layers, sites in stacks:
      for layer in range(n_layers):
        for site in sites:
          module = _SITE_MODULE[site][1]
          base = (stack, f"layers_{layer}", module)

          def add(name, shape, axes, site=site, base=base, layer=layer, stack=stack):
            out.append(Slot(base + (name,), stack, layer, site, name,
                            tuple(shape), tuple(axes)))

          is_attn = site in ATTENTION_SITES
          if self.adapter and site in self.adapter.sites:
            a = self.adapter.size
            add("adapter_down", (d, a), ("embed", "adapter"))
            add("adapter_up", (a, d), ("adapter", "embed"))
            if self.adapter.bias:
              add("adapter_down_bias", (a,), ("adapter",))
              add("adapter_up_bias", (d,), ("embed",))
          if is_attn and self.prefix and site in self.prefix.sites and (
              self.prefix.num_tokens > 0):
            p = self.prefix.num_tokens
            add("prefix_key", (p, hk), ("prefix", "joined_kv"))
            add("prefix_value", (p, hk), ("prefix", "joined_kv"))
          if self.lora:
            stack_on = any(_SITE_MODULE[s][0] == stack for s in self.lora.sites)
            for target, r in self.lora.ranks:
              if is_attn and target in "qkvo" and site in self.lora.sites:
                din, dout = (hk, d) if target == "o" else (d, hk)
                add(f"lora_{target}_a", (din, r), (_in_axis(target), "lora_rank"))
                add(f"lora_{target}_b", (r, dout), ("lora_rank", _out_axis(target)))
              if not is_attn and target in ("wi", "wo") and stack_on:
                din, dout = (d, ff) if target == "wi" else (ff, d)
                ax_in, ax_out = ("embed", "mlp") if target == "wi" else ("mlp", "embed")
                names = (("wi_0", "wi_1") if target == "wi" and cfg.is_gated
                         else (target,))
                for nm in names:
                  add(f"lora_{nm}_a", (din, r), (ax_in, "lora_rank"))
                  add(f"lora_{nm}_b", (r, dout), ("lora_rank", ax_out))
          if self.ia3:
            if is_attn:
              for t in ("k", "v"):
                if t in self.ia3.targets:
                  add(f"ia3_{t}", (hk,), ("joined_kv",))
            elif "ff" in self.ia3.targets:
              add("ia3_ff", (ff,), ("mlp",))
    if self.prompt and self.prompt.num_tokens > 0:
      out.append(Slot(("prompt", "embedding"), "prompt", -1, "prompt", "prompt",
                      (self.prompt.num_tokens, d), ("prefix", "embed")))
    return out

  @property
  def adapter_activation(self) -> str:
    """The adapters' activation (``relu`` when there are none)."""
    return self.adapter.activation if self.adapter else "relu"

  def lora_scales(self) -> Optional[dict[str, float]]:
    """LoRA target -> ``alpha / rank`` (1 without alpha); None without LoRA."""
    if not self.lora:
      return None
    return {t: self.lora.scale(r) for t, r in self.lora.ranks}

  def lora_scale(self, name: str) -> float:
    """Scale for LoRA parameter type ``lora_<target>_a`` / ``_b``."""
    target = name.split("_")[1]
    target = "wi" if target.startswith("wi") else target
    return (self.lora_scales() or {}).get(target, 1.0)


def _in_axis(target: str) -> str:
  return "joined_kv" if target == "o" else "embed"


def _out_axis(target: str) -> str:
  return "embed" if target == "o" else "joined_kv"


def _check_subset(what, values, allowed):
  bad = [v for v in values if v not in allowed]
  if bad:
    raise ValueError(f"{what}: unknown {bad}; allowed {allowed}.")


def site_module(site: str) -> tuple[str, str]:
  """(stack, module) of a site, e.g. ``"cross" -> ("decoder", "encoder_decoder_attention")``."""
  return _SITE_MODULE[site]
