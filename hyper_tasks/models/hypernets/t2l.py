"""Text-to-LoRA-style (Charakorn et al. 2025): pooled task + layer + module embeddings.

For every LoRA module (stack, layer, site, target) the input is the sum of

  * the projected, masked-mean-pooled instruction ``[B, hidden]`` (the task),
  * a layer embedding of the module's global layer index (``layer_embedding``:
    ``"learned"`` table or fixed ``"sinusoidal"``), and
  * a learned module-type embedding (one per (site, target), e.g. cross-attention
    ``q``),

(a sum of projections equals T2L's linear map of their concatenation). A *shared*
residual MLP trunk (``num_blocks`` blocks) maps it to a module code, and one linear
output head per parameter type (``lora_q_a``, ``lora_q_b``, ...) maps the code to
the full ``A`` or ``B``, emitted as ``[r, width]``.

Generates LoRA only.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from hyper_tasks.models.hypernets import common
from hyper_tasks.models.layers import RMSNorm


def _target(name: str) -> str:
  """``lora_wi_0_a -> wi_0``."""
  return name[len("lora_"):-2]


class TextToLora(common.HypernetBase):
  """Text-to-LoRA hypernetwork; generates LoRA only."""
  layer_embedding: str = "learned"
  num_blocks: int = 2

  NAME = "t2l"
  SUPPORTED = ("lora",)

  @nn.compact
  def __call__(self, h, mask, deterministic: bool = True) -> dict:
    """Instruction states ``[B, Lh, D]`` and mask ``[B, Lh]`` -> slot tree ``[B, ...]``."""
    cfg = self.config
    slots = self.slots()
    d = self.dim
    modules, types = {}, {}
    for s in slots:
      modules.setdefault(s.path[:-1] + (_target(s.name),), len(modules))
      types.setdefault((s.site, _target(s.name)), len(types))
    first = {}
    for s in slots:
      first.setdefault(modules[s.path[:-1] + (_target(s.name),)], s)
    layer_idx = np.array([common.global_layer(first[m], cfg) for m in range(len(modules))])
    type_idx = np.array([types[(first[m].site, _target(first[m].name))]
                         for m in range(len(modules))])
    n_layers = cfg.num_encoder_layers + cfg.num_decoder_layers

    pooled = common.masked_mean_pool(h.astype(self.dtype), mask)   # [B, D]
    task = common.HyperDense(d, ("embed", "hyper_embed"), dtype=self.dtype,
                             name="task_proj")(pooled)             # [B, hidden]
    if self.layer_embedding == "learned":
      table = common.param(self, "layer_embedding", nn.initializers.normal(1.0),
                           (n_layers, d), ("layers", "hyper_embed"))
      layer_e = jnp.asarray(table, self.dtype)[layer_idx]
    elif self.layer_embedding == "sinusoidal":
      layer_e = jnp.asarray(common.sinusoidal_embedding(layer_idx, d), self.dtype)
    else:
      raise ValueError(f"hypernet 't2l': unknown layer_embedding "
                       f"{self.layer_embedding!r}; use 'learned' or 'sinusoidal'.")
    type_table = common.param(self, "module_embedding", nn.initializers.normal(1.0),
                              (len(types), d), ("slots", "hyper_embed"))
    module_e = jnp.asarray(type_table, self.dtype)[type_idx]
    z = task[:, None] + (layer_e + module_e)[None]                 # [B, M, hidden]
    z = nn.Dropout(self.dropout_rate)(z, deterministic=deterministic)
    for i in range(self.num_blocks):
      y = RMSNorm(dtype=self.dtype, axis="hyper_embed", name=f"block_{i}_norm")(z)
      z = z + common.MlpHead(self.head_hidden, d, "hyper_embed", "hyper_embed", 1.0,
                             self.dropout_rate, self.dtype, name=f"block_{i}")(
                                 y, deterministic)
    z = RMSNorm(dtype=self.dtype, axis="hyper_embed", name="final_norm")(z)
    z = common.constrain(z, ("batch", "slots", "hyper_embed"))

    values = {}
    for name, group in common.group_by_type(slots).items():
      lay = common.row_layout(group[0])
      std = common.output_head_init_scale(self, name) * d ** -0.5
      w = common.param(self, f"{name}_head", nn.initializers.normal(std),
                       (d, lay.rows, lay.width),
                       ("hyper_embed", lay.row_axis_name, lay.width_axis_name))
      bias = common.param(self, f"{name}_bias", nn.initializers.zeros,
                          (lay.rows, lay.width), (lay.row_axis_name, lay.width_axis_name))
      idx = np.array([modules[s.path[:-1] + (_target(s.name),)] for s in group])
      out = jnp.einsum("bmd,drw->bmrw", z[:, idx], jnp.asarray(w, self.dtype))
      out = out + jnp.asarray(bias, self.dtype)
      for i, s in enumerate(group):
        values[s.path] = common.finish(s, common.rows_to_slot(out[:, i], lay),
                                       self.output_scale)
    return common.assemble(values, slots)
