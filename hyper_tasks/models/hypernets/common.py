"""Pieces shared by the hypernetworks: spec checks, row layouts, heads, attention.

Every hypernetwork maps the encoded instruction ``h [B, Lh, D]`` (with its mask) to
the slot tree of a :class:`~hyper_tasks.models.peft_spec.PeftSpec`: the nested dict
of ``spec.slots(cfg)`` paths, each leaf ``[B, *slot.shape]``.

Row layout (HINT's "component" scheme). A generated matrix is emitted one *row*
at a time along its small axis: ``adapter_down [D, A]`` is ``A`` rows of width
``D``, ``prefix_key [P, H*K]`` is ``P`` rows of width ``H*K``, ``lora_q_b [r, H*K]``
is ``r`` rows, an IA3 vector ``[F]`` is one row. A head therefore outputs ``width``
numbers per row instead of the whole flattened tensor, which keeps heads small at
large sizes. :func:`row_layout` says which axis is the row axis;
:func:`rows_to_slot` puts the rows back into the slot's shape.

Output scaling. Each generated tensor is ``output_scale * fan_in**-0.5 * raw`` where
``fan_in`` is the slot's input dimension for weight matrices (adapters, LoRA), the
backbone width ``d_model`` for adapter biases (HINT divides every generated tensor by
``sqrt(d_model)``) and 1 otherwise (prefixes, prompt, IA3), so a unit-variance head
output yields a well-scaled weight. The last layer of heads for *output-side*
tensors (adapter up and its bias, LoRA B, prefix values, IA3) starts at
``small_init`` times the usual scale, so an
untrained hypernetwork leaves the backbone close to plain T5 while every gradient is
non-zero from the first step. ``output_scale = 0`` makes the hypernetwork emit exact
zeros (used by the identity tests).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hyper_tasks.models.config import T5Config
from hyper_tasks.models.layers import constrain
from hyper_tasks.models.peft.static import set_path
from hyper_tasks.models.peft_spec import PeftSpec, Slot
from hyper_tasks.models.t5 import Encoder

Array = Any

METHODS = ("adapter", "prefix", "lora", "prompt", "ia3")
# Logical axis names that enumerate rows of a generated matrix.
ROW_AXES = ("adapter", "lora_rank", "prefix")
_NEG_INF = -1e10


def method_of(name: str) -> str:
  """PEFT method of a parameter type: ``"lora_q_a" -> "lora"``."""
  if name == "prompt":
    return "prompt"
  return name.split("_")[0]


def check_spec(hypernet: str, spec: PeftSpec, cfg: T5Config,
               supported: Sequence[str], adapter_bias: bool = True) -> list[Slot]:
  """The spec's slots, after checking that ``hypernet`` can generate all of them.

  Args:
    adapter_bias: whether the hypernetwork can generate adapter biases.
  Raises:
    ValueError: the spec generates nothing, or contains a method (or adapter
      biases) the hypernetwork cannot produce (naming both).
  """
  slots = spec.slots(cfg)
  if not slots:
    raise ValueError(
        f"hypernet {hypernet!r}: the PEFT spec generates no parameters (every method "
        "is off or has size 0); use hypernet='none' for plain T5.")
  bad = sorted({method_of(s.name) for s in slots} - set(supported))
  if bad:
    raise ValueError(
        f"hypernet {hypernet!r} cannot produce PEFT method(s) {bad}; it generates "
        f"only {tuple(supported)}. Drop them from the PEFT spec or choose another "
        "hypernetwork ('hint' generates every method).")
  if spec.adapter is not None and spec.adapter.bias and not adapter_bias:
    raise ValueError(
        f"hypernet {hypernet!r} generates bias-free adapters; set "
        "models.make_peft_spec.adapter_bias=False (ADAPTER_BIAS) or use 'hint'.")
  return slots


def is_output_side(name: str) -> bool:
  """Types whose zero makes the method the identity; they start near zero."""
  return (name in ("adapter_up", "adapter_up_bias", "prefix_value")
          or name.startswith("ia3_")
          or (name.startswith("lora_") and name.endswith("_b")))


def target_scale(slot: Slot, d_model: Optional[int] = None) -> float:
  """``fan_in ** -0.5`` for weight matrices (adapters, LoRA), ``d_model ** -0.5`` for
  adapter biases (as HINT scales them), else 1.

  Raises:
    ValueError: an adapter bias without ``d_model``.
  """
  if slot.name.startswith("adapter_") and slot.name.endswith("_bias"):
    if not d_model:
      raise ValueError(f"target_scale({slot.name!r}) needs the backbone d_model.")
    return float(d_model) ** -0.5
  if method_of(slot.name) in ("adapter", "lora"):
    return float(slot.shape[0]) ** -0.5
  return 1.0


@dataclasses.dataclass(frozen=True)
class RowLayout:
  """How a slot is emitted row by row (see the module docstring)."""
  slot: Slot
  rows: int
  width: int
  row_axis: Optional[int]        # axis of ``slot.shape`` the rows run along
  width_axis_name: str           # logical name of the width dimension

  @property
  def row_axis_name(self) -> str:
    return "slots" if self.row_axis is None else self.slot.axes[self.row_axis]


def row_layout(slot: Slot) -> RowLayout:
  if len(slot.shape) == 1:
    return RowLayout(slot, 1, slot.shape[0], None, slot.axes[0])
  i = 0 if slot.axes[0] in ROW_AXES else 1
  return RowLayout(slot, slot.shape[i], slot.shape[1 - i], i, slot.axes[1 - i])


def rows_to_slot(rows: Array, layout: RowLayout) -> Array:
  """``[B, rows, width]`` -> ``[B, *slot.shape]``."""
  if layout.row_axis is None:
    return rows[:, 0]
  if layout.row_axis == 0:
    return rows
  return jnp.swapaxes(rows, 1, 2)


def group_by_type(slots: Sequence[Slot]) -> "collections.OrderedDict[str, list[Slot]]":
  """Slots per parameter type, types in order of first appearance.

  Raises:
    ValueError: if one type has two shapes (a spec bug; heads are per type).
  """
  groups: collections.OrderedDict[str, list[Slot]] = collections.OrderedDict()
  for s in slots:
    groups.setdefault(s.name, []).append(s)
  for name, group in groups.items():
    shapes = {s.shape for s in group}
    if len(shapes) != 1:
      raise ValueError(f"Parameter type {name!r} has several shapes {shapes}.")
  return groups


def finish(slot: Slot, value: Array, output_scale: float,
           d_model: Optional[int] = None) -> Array:
  """Scale one generated ``[B, *slot.shape]`` tensor and name its axes
  (``d_model``: the backbone width, needed for adapter biases)."""
  value = value * (output_scale * target_scale(slot, d_model))
  return constrain(value, ("batch",) + slot.axes)


def assemble(values: dict, slots: Sequence[Slot]) -> dict:
  """``{slot.path: [B, ...]}`` -> the nested slot tree, in spec order."""
  tree: dict = {}
  for s in slots:
    set_path(tree, s.path, values[s.path])
  return tree


def masked_mean_pool(h: Array, mask: Array) -> Array:
  """Mean of ``h [B, L, D]`` over real tokens (``mask [B, L]``) -> ``[B, D]``.

  An all-padding row pools to zeros rather than NaN.
  """
  m = mask.astype(h.dtype)[..., None]
  total = jnp.sum(h * m, axis=1)
  count = jnp.maximum(jnp.sum(m, axis=1), 1.0)
  return total / count


def global_layer(slot: Slot, cfg: T5Config) -> int:
  """Layer index over both stacks: encoder ``0..Le-1``, decoder ``Le..``."""
  if slot.stack == "decoder":
    return cfg.num_encoder_layers + slot.layer
  return max(slot.layer, 0)


def sinusoidal_embedding(positions: np.ndarray, dim: int) -> np.ndarray:
  """Fixed transformer sinusoids ``[N, dim]`` for integer ``positions``."""
  half = dim // 2
  freq = np.exp(-np.log(10000.0) * np.arange(half) / max(half, 1))
  ang = positions[:, None].astype(np.float64) * freq[None]
  emb = np.concatenate([np.sin(ang), np.cos(ang)], axis=1)
  if dim % 2:
    emb = np.concatenate([emb, np.zeros((len(positions), 1))], axis=1)
  return emb.astype(np.float32)


def param(module: nn.Module, name: str, init, shape, axes):
  """A float32 parameter with logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)),
                      tuple(shape), jnp.float32)


class HyperDense(nn.Module):
  """``x @ kernel + bias`` with logical axes ``(in_axis, out_axis)``.

  ``init_scale`` multiplies the fan-in normal init (LeCun), so 1 is the usual
  initialisation and a small value starts the output near zero.
  """
  features: int
  axes: tuple[str, str]
  init_scale: float = 1.0
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    std = self.init_scale * x.shape[-1] ** -0.5
    kernel = param(self, "kernel", nn.initializers.normal(std),
                   (x.shape[-1], self.features), self.axes)
    y = jnp.einsum("...i,io->...o", x.astype(self.dtype),
                   jnp.asarray(kernel, self.dtype))
    if self.use_bias:
      bias = param(self, "bias", nn.initializers.zeros, (self.features,),
                   (self.axes[1],))
      y = y + jnp.asarray(bias, self.dtype)
    return y


class MlpHead(nn.Module):
  """``Dense -> GELU -> dropout -> Dense``: one per parameter type.

  Maps ``[..., Din]`` to ``[..., out_features]``; the last kernel's axes are
  ``("hyper_mlp", out_axis)``.
  """
  hidden: int
  out_features: int
  in_axis: str = "hyper_embed"
  out_axis: str = "embed"
  final_init_scale: float = 1.0
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    h = HyperDense(self.hidden, (self.in_axis, "hyper_mlp"), dtype=self.dtype,
                   name="wi")(x)
    h = jax.nn.gelu(h, approximate=True)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return HyperDense(self.out_features, ("hyper_mlp", self.out_axis),
                      self.final_init_scale, dtype=self.dtype, name="wo")(h)


class Attention(nn.Module):
  """Multi-head dot-product attention (scaled by ``head_dim ** -0.5``).

  Queries ``[B|-, Q, Dq]`` (unbatched learned queries broadcast), keys/values
  ``[B, L, Dkv]``, optional boolean ``mask [B, L]`` (True = visible). Returns
  ``[B, Q, out_features]``.

  Memory: with more than ``row_chunk`` query rows (HINT's 5-10k slot rows at real
  sizes), unbatched queries are projected once, not once per example, and the
  scores are computed ``row_chunk`` rows at a time, so the largest intermediate is
  ``[B, heads, row_chunk, L]`` rather than ``[B, heads, Q, L]``. The result is the
  same as unchunked attention up to float rounding (each row's softmax is its
  own); with dropout each chunk draws its own mask. Up to ``row_chunk`` rows the
  computation is the plain per-example one.
  """
  num_heads: int
  head_dim: int
  out_features: int
  q_axis: str = "hyper_embed"
  kv_axis: str = "hyper_embed"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  row_chunk: Optional[int] = 1024

  @nn.compact
  def __call__(self, q_in, kv_in, mask=None, deterministic: bool = True):
    hk = self.num_heads * self.head_dim
    b = kv_in.shape[0]
    dense = lambda axis, name: HyperDense(hk, (axis, "hyper_heads"), use_bias=False,
                                          dtype=self.dtype, name=name)
    split = lambda x: x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))
    num_rows = q_in.shape[-2]
    if q_in.ndim == 2 and (not self.row_chunk or num_rows <= self.row_chunk):
      # Few rows: per example, exactly as before chunking existed (same numerics).
      q_in = jnp.broadcast_to(q_in[None], (b,) + q_in.shape)
    # [Q, H, d] (shared by the batch) or [B, Q, H, d].
    q = split(dense(self.q_axis, "query")(q_in))
    k = split(dense(self.kv_axis, "key")(kv_in))
    v = split(dense(self.kv_axis, "value")(kv_in))
    shared = q.ndim == 3
    rate = self.dropout_rate if not deterministic else 0.0

    def attend(q_rows, drop_key=None):
      spec = "qhd" if shared else "bqhd"
      scores = jnp.einsum(f"{spec},bkhd->bhqk", q_rows, k).astype(jnp.float32)
      scores = scores * self.head_dim ** -0.5
      if mask is not None:
        scores = jnp.where(mask[:, None, None, :], scores, _NEG_INF)
      probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
      if drop_key is None:
        probs = nn.Dropout(self.dropout_rate)(probs, deterministic=deterministic)
      elif rate > 0.0:
        keep = jax.random.bernoulli(drop_key, 1.0 - rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - rate), 0.0).astype(self.dtype)
      return jnp.einsum("bhqk,bkhd->bqhd", probs, v)

    if not self.row_chunk or num_rows <= self.row_chunk:
      out = attend(q)
    else:
      # Chunks in a loop (lax.map), so only one chunk's scores are alive at a time;
      # rematerialised, so the backward pass does not stack every chunk's scores.
      chunk = self.row_chunk
      num_chunks = -(-num_rows // chunk)
      pad = num_chunks * chunk - num_rows
      row_axis = 0 if shared else 1
      q_pad = jnp.pad(q, [(0, pad) if a == row_axis else (0, 0)
                          for a in range(q.ndim)])
      q_chunks = jnp.moveaxis(q_pad.reshape(
          q.shape[:row_axis] + (num_chunks, chunk) + q.shape[row_axis + 1:]),
                              row_axis, 0)
      key = self.make_rng("dropout") if rate > 0.0 else jax.random.PRNGKey(0)
      keys = jax.random.split(key, num_chunks)
      outs = jax.lax.map(jax.checkpoint(lambda a: attend(a[0], a[1])),
                         (q_chunks, keys))
      # [chunks, B, chunk, H, d] -> [B, rows, H, d]
      out = jnp.moveaxis(outs, 0, 1).reshape(
          (b, num_chunks * chunk) + outs.shape[-2:])[:, :num_rows]
    return HyperDense(self.out_features, ("hyper_heads", "hyper_embed"),
                      use_bias=False, dtype=self.dtype, name="out")(
                          out.reshape(b, num_rows, hk))


class HypernetBase(nn.Module):
  """Fields and the optional separate instruction encoder shared by hypernetworks.

  Attributes:
    config: the backbone configuration (slot shapes depend on it).
    spec: the PEFT spec whose slots the hypernetwork generates.
    hidden_dim: hypernetwork width (default: the backbone's ``d_model``).
    mlp_dim: hidden size of the MLP heads (default: ``hidden_dim``).
    num_heads: attention heads where the hypernetwork attends.
    dropout_rate: dropout inside the hypernetwork.
    output_scale: multiplier on every generated tensor (0 = emit zeros).
    small_init: initial scale of the last layer for output-side tensors.
    separate_encoder: read the instruction with an own T5 encoder under
      ``hypernet/encoder/`` instead of the backbone's encoder.
    encoder_layers: layers of that separate encoder (default: the backbone's).
  """
  config: T5Config
  spec: PeftSpec
  hidden_dim: Optional[int] = None
  mlp_dim: Optional[int] = None
  num_heads: int = 4
  dropout_rate: float = 0.1
  output_scale: float = 1.0
  small_init: float = 1e-2
  separate_encoder: bool = False
  encoder_layers: Optional[int] = None

  NAME = "base"
  SUPPORTED: tuple[str, ...] = METHODS
  ADAPTER_BIAS = True  # can generate adapter biases

  @property
  def has_encoder(self) -> bool:
    return self.separate_encoder

  @property
  def dim(self) -> int:
    return self.hidden_dim or self.config.d_model

  @property
  def head_hidden(self) -> int:
    return self.mlp_dim or self.dim

  @property
  def dtype(self):
    return self.config.dtype

  def setup(self):
    if self.separate_encoder:
      cfg = self.config
      if self.encoder_layers:
        cfg = cfg.replace(num_encoder_layers=self.encoder_layers)
      self.encoder = Encoder(cfg)

  def encode(self, x, mask, deterministic: bool = True):
    """Embedded instruction ``[B, Lh, D]`` -> token states ``[B, Lh, D]``."""
    if not self.separate_encoder:
      raise ValueError(f"hypernet {self.NAME!r} has no separate encoder "
                       "(separate_encoder=False).")
    return self.encoder(x, mask, deterministic=deterministic)

  def slots(self) -> list[Slot]:
    return check_spec(self.NAME, self.spec, self.config, self.SUPPORTED,
                      self.ADAPTER_BIAS)

  def attn_head_dim(self) -> int:
    if self.dim % self.num_heads:
      raise ValueError(f"hypernet {self.NAME!r}: hidden_dim {self.dim} is not "
                       f"divisible by num_heads {self.num_heads}.")
    return self.dim // self.num_heads

  def emit_row_groups(self, x, groups, layouts, values: dict, offset: int = 0,
                      deterministic: bool = True) -> int:
    """Reads consecutive query rows of ``x`` through one MLP head per slot type.

    Args:
      x: ``[B, Q, hyper_embed]`` query states; group ``name`` takes the next
        ``len(group) * rows`` of them from ``offset`` on.
      groups: slot type -> slots (``group_by_type``), each type one head
        ``{name}_head``; layouts: slot path -> :class:`RowLayout`.
      values: filled in place, slot path -> generated tensor.
    Returns:
      the offset after the last group.
    Must be called from a compact method (the heads are submodules of ``self``).
    """
    b = x.shape[0]
    for name, group in groups.items():
      lay = layouts[group[0].path]
      n = len(group) * lay.rows
      out = MlpHead(self.head_hidden, lay.width, "hyper_embed", lay.width_axis_name,
                    output_head_init_scale(self, name), self.dropout_rate,
                    self.dtype, name=f"{name}_head")(x[:, offset:offset + n],
                                                     deterministic)
      offset += n
      out = out.reshape(b, len(group), lay.rows, lay.width)
      for i, s in enumerate(group):
        values[s.path] = finish(s, rows_to_slot(out[:, i], lay), self.output_scale,
                                self.config.d_model)
    return offset


def output_head_init_scale(base: nn.Module, name: str) -> float:
  return base.small_init if is_output_side(name) else 1.0

