"""HyperTune / HyperT5-style (Phang et al. 2022): a small decoder emits prefixes and LoRA.

A stack of ``num_layers`` pre-norm blocks (self-attention among the queries, cross-
attention to the instruction ``h [B, Lh, D]`` under its mask, MLP) runs over learned
decoder inputs:

  * prefixes (HyperT5-Prefix): ``P`` position queries shared by all layers; the
    decoder's ``P`` outputs go through a *per-site* linear map (one per
    (stack, layer, site)) to that site's prefix keys and values ``[P, H*K]``;
  * LoRA (HyperT5-LoRA): one query per (slot, rank row), as HINT's component
    queries; one MLP head per parameter type maps an output to its row.

Generates prefixes and LoRA only.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from hyper_tasks.models.hypernets import common
from hyper_tasks.models.layers import RMSNorm


class DecoderBlock(nn.Module):
  """``x += SelfAttn(x); x += CrossAttn(x, h); x += Mlp(x)``, pre-norm, no mask
  among the queries (they are not a sequence to predict)."""
  dim: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, h, mask, deterministic: bool = True):
    head_dim = self.dim // self.num_heads
    drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    norm = lambda name: RMSNorm(dtype=self.dtype, axis="hyper_embed", name=name)
    y = norm("pre_self_attention_norm")(x)
    x = x + drop(common.Attention(self.num_heads, head_dim, self.dim, "hyper_embed",
                                  "hyper_embed", self.dropout_rate, self.dtype,
                                  name="self_attention")(y, y, None, deterministic))
    y = norm("pre_cross_attention_norm")(x)
    x = x + drop(common.Attention(self.num_heads, head_dim, self.dim, "hyper_embed",
                                  "embed", self.dropout_rate, self.dtype,
                                  name="cross_attention")(y, h, mask, deterministic))
    y = norm("pre_mlp_norm")(x)
    x = x + drop(common.MlpHead(self.mlp_dim, self.dim, "hyper_embed", "hyper_embed",
                                1.0, self.dropout_rate, self.dtype, name="mlp")(
                                    y, deterministic))
    return common.constrain(x, ("batch", "slots", "hyper_embed"))


class HyperTune(common.HypernetBase):
  """HyperTune/HyperT5 hypernetwork; generates prefixes and LoRA."""
  num_layers: int = 2

  NAME = "hypertune"
  SUPPORTED = ("prefix", "lora")

  @nn.compact
  def __call__(self, h, mask, deterministic: bool = True) -> dict:
    """Instruction states ``[B, Lh, D]`` and mask ``[B, Lh]`` -> slot tree ``[B, ...]``."""
    cfg = self.config
    slots = self.slots()
    self.attn_head_dim()  # validates hidden_dim % num_heads
    prefix_sites: dict = {}
    lora_slots = []
    for s in slots:
      if s.name.startswith("prefix_"):
        prefix_sites.setdefault(s.path[:-1], {})[s.name] = s
      else:
        lora_slots.append(s)
    lora_groups = common.group_by_type(lora_slots)
    layouts = {s.path: common.row_layout(s) for s in lora_slots}
    p = self.spec.prefix.num_tokens if prefix_sites else 0
    n_lora = sum(layouts[s.path].rows for s in lora_slots)
    d = self.dim
    queries = common.param(self, "queries", nn.initializers.normal(1.0),
                           (p + n_lora, d), ("slots", "hyper_embed"))
    b = h.shape[0]
    x = jnp.broadcast_to(jnp.asarray(queries, self.dtype)[None], (b, p + n_lora, d))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    h = h.astype(self.dtype)
    for i in range(self.num_layers):
      x = DecoderBlock(d, self.num_heads, self.head_hidden, self.dropout_rate,
                       self.dtype, name=f"layers_{i}")(x, h, mask, deterministic)
    x = RMSNorm(dtype=self.dtype, axis="hyper_embed", name="final_norm")(x)

    values = {}
    if prefix_sites:
      keys = list(prefix_sites)
      hk = cfg.inner_dim
      for name in ("prefix_key", "prefix_value"):
        scale = common.output_head_init_scale(self, name) * d ** -0.5
        w = common.param(self, f"{name}_proj", nn.initializers.normal(scale),
                         (len(keys), d, hk), ("layers", "hyper_embed", "joined_kv"))
        out = jnp.einsum("bpd,sdk->bspk", x[:, :p], jnp.asarray(w, self.dtype))
        for i, key in enumerate(keys):
          s = prefix_sites[key][name]
          values[s.path] = common.finish(s, out[:, i], self.output_scale)
    self.emit_row_groups(x, lora_groups, layouts, values, p, deterministic)
    return common.assemble(values, slots)
