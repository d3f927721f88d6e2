"""Hypter (Ye & Ren 2021): the mean-pooled instruction through per-layer MLPs to adapters.

The instruction is reduced to one vector ``[B, D]`` (masked mean over tokens); for
every adapter site (stack, layer, site) an MLP maps it to that site's adapter, emitted
as ``2A`` rows of width ``D`` (``A`` columns of ``down``, then ``A`` rows of ``up``).

Layer handling (``layer_embedding``):
  * ``"per_layer"`` (Hypter's): a separate MLP per site, stored stacked along a
    ``layers`` axis (``wi [G, D, H]``, ``wo [G, H, 2A, D]``). Large: Hypter used
    small adapters (e.g. 8) for this reason.
  * ``"shared"``: one MLP for all sites; a learned site embedding is added to the
    projected instruction, so the same weights serve every layer.

Generates adapters only, without biases (any activation).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hyper_tasks.models.hypernets import common


def _wo_init(a: int, small: float, fan_in: int):
  """Normal fan-in init for ``[..., H, 2A, D]`` with the ``up`` rows scaled by
  ``small`` so the untrained adapters are near the identity."""
  def init(key, shape, dtype=jnp.float32):
    w = jax.random.normal(key, shape, dtype) * fan_in ** -0.5
    row_scale = np.concatenate([np.ones(a), np.full(a, small)]).astype(np.float32)
    return w * row_scale[:, None]
  return init


class Hypter(common.HypernetBase):
  """Hypter hypernetwork; generates adapters only."""
  layer_embedding: str = "per_layer"

  NAME = "hypter"
  SUPPORTED = ("adapter",)
  ADAPTER_BIAS = False

  @nn.compact
  def __call__(self, h, mask, deterministic: bool = True) -> dict:
    """Instruction states ``[B, Lh, D]`` and mask ``[B, Lh]`` -> slot tree ``[B, ...]``."""
    cfg = self.config
    slots = self.slots()
    # One group per adapter site; each holds (adapter_down, adapter_up).
    sites: dict = {}
    for s in slots:
      sites.setdefault(s.path[:-1], {})[s.name] = s
    keys = list(sites)
    g, d, hid = len(keys), cfg.d_model, self.head_hidden
    a = self.spec.adapter.size
    pooled = common.masked_mean_pool(h.astype(self.dtype), mask)  # [B, D]
    drop = nn.Dropout(self.dropout_rate)
    p = lambda name, init, shape, axes: jnp.asarray(
        common.param(self, name, init, shape, axes), self.dtype)

    if self.layer_embedding == "per_layer":
      wi = p("wi", nn.initializers.normal(d ** -0.5), (g, d, hid),
             ("layers", "embed", "hyper_mlp"))
      bi = p("bi", nn.initializers.zeros, (g, hid), ("layers", "hyper_mlp"))
      hidden = jnp.einsum("bd,gdh->bgh", pooled, wi) + bi
      hidden = drop(jax.nn.gelu(hidden, approximate=True), deterministic=deterministic)
      wo = p("wo", _wo_init(a, self.small_init, hid), (g, hid, 2 * a, d),
             ("layers", "hyper_mlp", "adapter", "embed"))
      out = jnp.einsum("bgh,ghrd->bgrd", hidden, wo)
    elif self.layer_embedding == "shared":
      site_emb = p("site_embedding", nn.initializers.normal(1.0), (g, self.dim),
                   ("layers", "hyper_embed"))
      x = common.HyperDense(self.dim, ("embed", "hyper_embed"), dtype=self.dtype,
                            name="instruction_proj")(pooled)
      x = x[:, None] + site_emb[None]  # [B, G, hidden]
      hidden = common.HyperDense(hid, ("hyper_embed", "hyper_mlp"), dtype=self.dtype,
                                 name="wi")(x)
      hidden = drop(jax.nn.gelu(hidden, approximate=True), deterministic=deterministic)
      wo = p("wo", _wo_init(a, self.small_init, hid), (hid, 2 * a, d),
             ("hyper_mlp", "adapter", "embed"))
      out = jnp.einsum("bgh,hrd->bgrd", hidden, wo)
    else:
      raise ValueError(f"hypernet 'hypter': unknown layer_embedding "
                       f"{self.layer_embedding!r}; use 'per_layer' or 'shared'.")
    bo = p("bo", nn.initializers.zeros, (2 * a, d), ("adapter", "embed"))
    out = out + bo  # [B, G, 2A, D]
    values = {}
    for i, key in enumerate(keys):
      down, up = sites[key]["adapter_down"], sites[key]["adapter_up"]
      values[down.path] = common.finish(down, jnp.swapaxes(out[:, i, :a], 1, 2),
                                        self.output_scale)
      values[up.path] = common.finish(up, out[:, i, a:], self.output_scale)
    return common.assemble(values, slots)
