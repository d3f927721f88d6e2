"""HINT (Ivison et al. 2023): learned component queries attend over the instruction.

Every generated tensor is cut into rows (see :mod:`.common`): ``adapter_down`` of
layer 3 is ``A`` rows, each prefix is ``P`` rows, an IA3 vector one row. Each row
of each slot has a learned query embedding; all queries attend (one multi-head
cross-attention) over the *token-level* instruction encoding ``h [B, Lh, D]`` with its
mask, and one MLP head per parameter type (``adapter_down``, ``prefix_key``,
``lora_q_b``, ...) maps an attended query to its row. Only slots the spec uses are
generated.

Query methods (``query_method``):
  * ``"component"`` (HINT's default): one free query per (slot, row).
  * ``"factored"``: query = layer-site embedding (one per (stack, layer, site)) +
    row embedding (one per (parameter type, row)); far fewer parameters at large
    sizes, and layers share what a row "means".

Instruction fusion (the decoder also cross-attends to the instruction) is done by
:class:`~hyper_tasks.models.transformer.Transformer` (``instruction_fusion=True``).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from hyper_tasks.models.hypernets import common
from hyper_tasks.models.layers import RMSNorm


class Hint(common.HypernetBase):
  """HINT hypernetwork; generates every PEFT method."""
  query_method: str = "component"

  NAME = "hint"
  SUPPORTED = common.METHODS

  def _queries(self, groups, layouts):
    """Learned queries ``[N, hidden]``, rows grouped by parameter type."""
    n = sum(len(g) * layouts[g[0].path].rows for g in groups.values())
    d = self.dim
    if self.query_method == "component":
      return common.param(self, "queries", nn.initializers.normal(1.0), (n, d),
                          ("slots", "hyper_embed"))
    if self.query_method != "factored":
      raise ValueError(f"hypernet 'hint': unknown query_method "
                       f"{self.query_method!r}; use 'component' or 'factored'.")
    sites, site_idx, row_idx, row_base = {}, [], [], 0
    for group in groups.values():
      rows = layouts[group[0].path].rows
      for s in group:
        key = (s.stack, s.layer, s.site)
        sites.setdefault(key, len(sites))
        site_idx += [sites[key]] * rows
        row_idx += list(range(row_base, row_base + rows))
      row_base += rows
    site_q = common.param(self, "site_queries", nn.initializers.normal(1.0),
                          (len(sites), d), ("slots", "hyper_embed"))
    row_q = common.param(self, "row_queries", nn.initializers.normal(1.0),
                         (row_base, d), ("slots", "hyper_embed"))
    return site_q[np.asarray(site_idx)] + row_q[np.asarray(row_idx)]

  @nn.compact
  def __call__(self, h, mask, deterministic: bool = True) -> dict:
    """Instruction states ``[B, Lh, D]`` and mask ``[B, Lh]`` -> slot tree ``[B, ...]``."""
    slots = self.slots()
    groups = common.group_by_type(slots)
    layouts = {s.path: common.row_layout(s) for s in slots}
    queries = jnp.asarray(self._queries(groups, layouts), self.dtype)  # [N, hidden]
    attended = common.Attention(
        self.num_heads, self.attn_head_dim(), self.dim, "hyper_embed", "embed",
        self.dropout_rate, self.dtype, name="attention")(
            queries, h.astype(self.dtype), mask, deterministic)
    x = RMSNorm(dtype=self.dtype, axis="hyper_embed", name="norm")(queries[None] + attended)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = common.constrain(x, ("batch", "slots", "hyper_embed"))
    values = {}
    self.emit_row_groups(x, groups, layouts, values, 0, deterministic)
    return common.assemble(values, slots)
