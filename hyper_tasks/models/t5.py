"""T5 encoder and decoder stacks (Raffel et al. 2020; T5.1.1 gated-GELU variant).

Pre-norm residual blocks with RMS layer norm, relative position bias computed once per
stack (first layer's table, shared by all layers, as in the reference), dropout on the
embeddings, attention probabilities, MLP hidden, every sublayer output and the final
norm. Each sublayer passes its slot dict of the ``Adaptation`` to the PEFT hooks.

``T5Config.remat_policy`` wraps each layer in ``nn.remat`` (same module names, so
the parameter tree is unchanged): "minimal" saves the weight matmuls' outputs
(``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``; attention scores and
elementwise results are recomputed), "full" saves nothing inside a layer
(``nothing_saveable``). Cached decoding and the instruction's cross keys/values
never rematerialise (no backward pass).

``T5Config.scan_layers`` runs each stack's layers as one ``nn.scan`` (``scan_stack``):
parameters ``layers/...`` stacked on a leading axis instead of ``layers_<i>/...``
(``models.scan_params`` converts between the two), dropout keys split per layer,
the decoding cache stacked the same way. Plain T5 only: a stack given generated
adaptations raises (they are per layer and not stacked yet).
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyper_tasks.models.adaptation import Adaptation
from hyper_tasks.models.attention import MultiHeadAttention
from hyper_tasks.models.config import T5Config
from hyper_tasks.models.layers import (Dense, RMSNorm, RelativePositionBias,
                                       activation_fn, constrain)
from hyper_tasks.models.peft.adapters import adapter_delta
from hyper_tasks.models.peft.ia3 import ia3_scale
from hyper_tasks.models.peft.lora import add_lora
from hyper_tasks.choices import check_choice


_REMAT = {
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def remat_layer(cls, policy: str, static_argnums: tuple):
  """``cls`` or ``nn.remat(cls)`` under the named policy (see ``REMAT_POLICIES``).

  ``static_argnums`` count ``self`` as 0 (flax's convention) and name the Python
  flags (``deterministic``, ``decode``).
  """
  if policy == "none":
    return cls
  check_choice("remat_policy", policy, ("none",) + tuple(_REMAT))
  return nn.remat(cls, policy=_REMAT[policy], static_argnums=static_argnums)


def scan_stack(layer_cls, num_layers: int, num_broadcast: int):
  """``nn.scan`` of ``layer_cls`` over ``num_layers`` layers: the carry is the
  first argument, the next ``num_broadcast`` are the same for every layer;
  parameters and cache stacked on axis 0 (logical "layers")."""
  return nn.scan(layer_cls, variable_axes={"params": 0, "cache": 0},
                 split_rngs={"params": True, "dropout": True},
                 in_axes=(nn.broadcast,) * num_broadcast, length=num_layers,
                 metadata_params={nn.PARTITION_NAME: "layers"})


def _check_scannable(adaptation: Optional[Adaptation], stack: str) -> None:
  if adaptation is not None:
    _scan_unsupported(stack)


def _scan_unsupported(stack: str) -> None:
  raise ValueError(
      f"T5Config.scan_layers: the {stack}'s layers are given an adaptation "
      "(hypernetwork or static PEFT slots, instruction fusion); per-layer "
      "adaptations are not scanned yet. Use scan_layers=False "
      "(models.make_model.scan_layers) for this model.")


def _site_slots(adaptation: Optional[Adaptation], stack: str, layer: int, module: str):
  return None if adaptation is None else adaptation.get(stack, f"layers_{layer}", module)


def _fused_kv(adaptation: Optional[Adaptation], layer: int):
  """This layer's cached instruction ``(keys, values, mask)``, or None."""
  if adaptation is None or adaptation.cross_kv is None:
    return None
  name = f"layers_{layer}"
  if name not in adaptation.cross_kv or adaptation.instruction_mask is None:
    raise ValueError(f"Adaptation.cross_kv lacks {name!r} (has "
                     f"{sorted(adaptation.cross_kv)}) or instruction_mask is None.")
  kv = adaptation.cross_kv[name]
  return kv["key"], kv["value"], adaptation.instruction_mask


def _add_adapter(y, x, slots, act: str = "relu"):
  delta = adapter_delta(x, slots, act)
  return y if delta is None else y + delta.astype(y.dtype)


class MlpBlock(nn.Module):
  """``wo(act(wi_0 x) * wi_1 x)`` (gated) or ``wo(act(wi x))``, with LoRA/IA3 hooks."""
  config: T5Config
  lora_scales: Optional[dict] = None

  @nn.compact
  def __call__(self, x, slots=None, deterministic=True):
    """``[B, L, D] -> [B, L, D]``."""
    cfg = self.config
    act = activation_fn(cfg.activation)
    scale = (self.lora_scales or {}).get("wi", 1.0)
    xd = x.astype(cfg.dtype)
    if cfg.is_gated:
      h0 = add_lora(Dense(cfg.d_ff, ("embed", "mlp"), cfg.d_model ** -0.5, cfg.dtype,
                          name="wi_0")(x), xd, slots, "wi_0", scale)
      h1 = add_lora(Dense(cfg.d_ff, ("embed", "mlp"), cfg.d_model ** -0.5, cfg.dtype,
                          name="wi_1")(x), xd, slots, "wi_1", scale)
      h = act(h0) * h1
    else:
      h = act(add_lora(Dense(cfg.d_ff, ("embed", "mlp"), cfg.d_model ** -0.5,
                             cfg.dtype, name="wi")(x), xd, slots, "wi", scale))
    h = ia3_scale(h, slots, "ia3_ff")
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    h = constrain(h, ("batch", "length", "mlp"))
    out = Dense(cfg.d_model, ("mlp", "embed"), cfg.d_ff ** -0.5, cfg.dtype,
                name="wo")(h)
    return add_lora(out, h, slots, "wo", (self.lora_scales or {}).get("wo", 1.0))


class _Layer(nn.Module):
  """What an encoder or decoder layer is built from: the configuration, its index
  (which selects its adaptation slots), LoRA scales and the adapters' activation."""
  config: T5Config
  layer: int
  lora_scales: Optional[dict] = None
  adapter_activation: str = "relu"
  scanned: bool = False  # Under scan_stack: return (output, None).


class EncoderLayer(_Layer):
  """Pre-norm self-attention and MLP blocks, each with its adapter and residual."""

  @nn.compact
  def __call__(self, x, bias, mask, adaptation=None, deterministic=True):
    cfg = self.config
    act = self.adapter_activation
    drop = nn.Dropout(cfg.dropout_rate)
    slots = _site_slots(adaptation, "encoder", self.layer, "attention")
    y = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="pre_attention_layer_norm")(x)
    a = MultiHeadAttention(cfg, self.lora_scales, name="attention")(
        y, y, bias, mask, slots, deterministic)
    x = x + drop(_add_adapter(a, y, slots, act), deterministic=deterministic)
    slots = _site_slots(adaptation, "encoder", self.layer, "mlp")
    y = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="pre_mlp_layer_norm")(x)
    m = MlpBlock(cfg, self.lora_scales, name="mlp")(y, slots, deterministic)
    x = x + drop(_add_adapter(m, y, slots, act), deterministic=deterministic)
    x = constrain(x, ("batch", "length", "embed"))
    return (x, None) if self.scanned else x


class DecoderLayer(_Layer):
  """Self-attention, cross-attention (to the encoder, and with instruction fusion
  to the instruction) and MLP blocks."""

  @nn.compact
  def __call__(self, x, encoded, self_bias, self_mask, cross_mask, adaptation=None,
               deterministic=True, decode=False, cross_kv_only=False):
    """One layer; with ``cross_kv_only`` just the cross-attention keys and values of
    ``encoded`` as ``{"key", "value"}`` ``[B, Le, H*K]`` (``x`` and masks unused)."""
    cfg = self.config
    if cross_kv_only:
      slots = _site_slots(adaptation, "decoder", self.layer,
                          "encoder_decoder_attention")
      k, v = MultiHeadAttention(cfg, self.lora_scales,
                                name="encoder_decoder_attention")(
                                    None, encoded, slots=slots, kv_only=True)
      return {"key": k, "value": v}
    drop = nn.Dropout(cfg.dropout_rate)
    eps = cfg.layer_norm_epsilon
    act = self.adapter_activation
    slots = _site_slots(adaptation, "decoder", self.layer, "self_attention")
    y = RMSNorm(eps, cfg.dtype, name="pre_self_attention_layer_norm")(x)
    a = MultiHeadAttention(cfg, self.lora_scales, name="self_attention")(
        y, y, self_bias, self_mask, slots, deterministic, decode=decode)
    x = x + drop(_add_adapter(a, y, slots, act), deterministic=deterministic)
    slots = _site_slots(adaptation, "decoder", self.layer, "encoder_decoder_attention")
    y = RMSNorm(eps, cfg.dtype, name="pre_cross_attention_layer_norm")(x)
    a = MultiHeadAttention(cfg, self.lora_scales, name="encoder_decoder_attention")(
        y, encoded, None, cross_mask, slots, deterministic,
        fused_kv=_fused_kv(adaptation, self.layer))
    x = x + drop(_add_adapter(a, y, slots, act), deterministic=deterministic)
    slots = _site_slots(adaptation, "decoder", self.layer, "mlp")
    y = RMSNorm(eps, cfg.dtype, name="pre_mlp_layer_norm")(x)
    m = MlpBlock(cfg, self.lora_scales, name="mlp")(y, slots, deterministic)
    x = x + drop(_add_adapter(m, y, slots, act), deterministic=deterministic)
    x = constrain(x, ("batch", "length", "embed"))
    return (x, None) if self.scanned else x


def _positions(mask_or_tokens, positions):
  if positions is not None:
    return positions
  return jnp.arange(mask_or_tokens.shape[1])[None, :]


class Encoder(nn.Module):
  """Encoder stack over already-embedded inputs (the caller owns the embedding)."""
  config: T5Config
  lora_scales: Optional[dict] = None
  adapter_activation: str = "relu"

  @nn.compact
  def __call__(self, x, mask, positions=None, segment_ids=None, adaptation=None,
               deterministic=True):
    """Encode.

    Args:
      x: ``[B, L, D]`` embedded inputs.
      mask: ``[B, L]`` boolean, True on real tokens.
      positions, segment_ids: ``[B, L]`` for packed inputs, else None.
    Returns:
      ``[B, L, D]``.
    """
    cfg = self.config
    pos = _positions(mask, positions)
    bias = RelativePositionBias(cfg.relative_attention_num_buckets,
                                cfg.relative_attention_max_distance, cfg.num_heads,
                                True, cfg.dtype, name="relpos_bias")(pos, pos)
    attn_mask = mask[:, None, None, :]
    if segment_ids is not None:
      attn_mask = attn_mask & (segment_ids[:, None, :, None] ==
                               segment_ids[:, None, None, :])
    x = nn.Dropout(cfg.dropout_rate)(x.astype(cfg.dtype), deterministic=deterministic)
    # x, bias, mask, adaptation, deterministic (static)
    layer_cls = remat_layer(EncoderLayer, cfg.remat_policy, (5,))
    if cfg.scan_layers:
      _check_scannable(adaptation, "encoder")
      x, _ = scan_stack(layer_cls, cfg.num_encoder_layers, 4)(
          cfg, 0, self.lora_scales, self.adapter_activation, scanned=True,
          name="layers")(x, bias, attn_mask, None, deterministic)
    for i in range(0 if cfg.scan_layers else cfg.num_encoder_layers):
      x = layer_cls(cfg, i, self.lora_scales, self.adapter_activation,
                    name=f"layers_{i}")(x, bias, attn_mask, adaptation,
                                        deterministic)
    x = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="encoder_norm")(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  """Decoder stack ending in vocabulary logits: through ``logits_dense`` when untied,
  else through the shared embedding scaled by ``d_model ** -0.5`` (as Mesh TF/HF do)."""
  config: T5Config
  lora_scales: Optional[dict] = None
  adapter_activation: str = "relu"

  def instruction_kv(self, instruction, adaptation=None) -> dict:
    """Every layer's cross-attention keys/values of the fused instruction.

    Args:
      instruction: ``[B, Lh, D]`` encoded instruction.
      adaptation: supplies the cross sites' k/v LoRA and IA3 (the same ones the
        instance's keys/values get).
    Returns:
      ``{"layers_<i>": {"key", "value"}}``, each ``[B, Lh, H*K]``.
    """
    return self(None, instruction, None, adaptation=adaptation, cross_kv_only=True)

  @nn.compact
  def __call__(self, y, encoded, encoder_mask, embedder=None, positions=None,
               segment_ids=None, encoder_segment_ids=None, adaptation=None,
               deterministic=True, decode=False, max_decode_length=None,
               cross_kv_only=False):
    """Decode.

    Args:
      y: ``[B, Lt, D]`` embedded decoder inputs (``[B, 1, D]`` when ``decode``).
      encoded: ``[B, Le, D]``; encoder_mask ``[B, Le]`` boolean.
      positions: ``[B, Lt]``; in decode mode the current step ``[B, 1]``.
      embedder: the shared ``Embed`` (needed when embeddings are tied).
    Returns:
      ``[B, Lt, vocab]`` logits.
    """
    cfg = self.config
    if cross_kv_only:  # see instruction_kv
      if cfg.scan_layers:
        _scan_unsupported("decoder")
      return {f"layers_{i}": DecoderLayer(
          cfg, i, self.lora_scales, self.adapter_activation, name=f"layers_{i}")(
              None, encoded, None, None, None, adaptation, cross_kv_only=True)
              for i in range(cfg.num_decoder_layers)}
    relpos = RelativePositionBias(cfg.relative_attention_num_buckets,
                                  cfg.relative_attention_max_distance, cfg.num_heads,
                                  False, cfg.dtype, name="relpos_bias")
    if decode:
      if positions is None or max_decode_length is None:
        raise ValueError("decode=True needs positions [B, 1] and max_decode_length.")
      self_bias = relpos(positions, jnp.arange(max_decode_length)[None, :])
      self_mask = None  # supplied by each layer's cache
    else:
      pos = _positions(y, positions)
      self_bias = relpos(pos, pos)
      self_mask = (pos[:, None, :, None] >= pos[:, None, None, :])
      if segment_ids is not None:
        self_mask = self_mask & (segment_ids[:, None, :, None] ==
                                 segment_ids[:, None, None, :])
    cross_mask = encoder_mask[:, None, None, :]
    if segment_ids is not None and encoder_segment_ids is not None and not decode:
      cross_mask = cross_mask & (segment_ids[:, None, :, None] ==
                                 encoder_segment_ids[:, None, None, :])
    y = nn.Dropout(cfg.dropout_rate)(y.astype(cfg.dtype), deterministic=deterministic)
    # y, encoded, biases/masks, adaptation, deterministic and decode (static)
    layer_cls = remat_layer(DecoderLayer, "none" if decode else cfg.remat_policy,
                            (7, 8))
    if cfg.scan_layers:
      _check_scannable(adaptation, "decoder")
      y, _ = scan_stack(layer_cls, cfg.num_decoder_layers, 7)(
          cfg, 0, self.lora_scales, self.adapter_activation, scanned=True,
          name="layers")(y, encoded, self_bias, self_mask, cross_mask, None,
                         deterministic, decode)
    for i in range(0 if cfg.scan_layers else cfg.num_decoder_layers):
      y = layer_cls(cfg, i, self.lora_scales, self.adapter_activation,
                       name=f"layers_{i}")(
          y, encoded, self_bias, self_mask, cross_mask, adaptation, deterministic,
          decode)
    y = RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, name="decoder_norm")(y)
    y = nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    if cfg.scales_logits:
      y = y * cfg.d_model ** -0.5
    if not cfg.tie_word_embeddings:
      logits = Dense(cfg.vocab_size, ("embed", "vocab"), cfg.d_model ** -0.5,
                     cfg.dtype, name="logits_dense")(y)
    else:
      logits = embedder.attend(y)
    return constrain(logits, ("batch", "length", "vocab"))
