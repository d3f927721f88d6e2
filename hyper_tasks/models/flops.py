"""Analytic forward FLOPs per instance, split into once-per-task and per-instance cost.

Convention: forward pass only, 2 FLOPs per multiply-accumulate, counting

  * every matmul: q/k/v/o projections, MLP kernels, the vocabulary projection,
    LoRA (``x @ A @ B``), adapters (``down``, ``up``), hypernetwork dense layers;
  * attention scores ``q k^T`` and the weighted sum ``probs v`` over every key the
    implementation attends to (full ``Lq x Lk``: the causal mask does not save work
    in a dense implementation, prefixes and fused instruction tokens add keys).

Ignored (small at real sizes, ``O(L D)`` or ``O(L^2 H)`` against ``O(L D^2)``):
softmax, layer norms, activations, IA3 scaling, residual adds, dropout, embedding
gathers, relative-position buckets, the loss. A backward pass costs about twice the
forward; training FLOPs ~= 3x these numbers.

Where each PEFT method costs (per instance):
  adapters     ``2 * 2 * L * D * A`` per site (down and up) for the site's tokens;
  LoRA         ``2 * L * r * (din + dout)`` per target;
  prefixes     ``P`` more keys at each prefixed site: ``2 * 2 * Lq * P * H*K``;
  prompt       ``P`` more encoder tokens: the whole encoder and the cross-attention
               keys grow by ``P``;
  fusion       ``Lh`` more cross-attention keys: the scores/values over them per
               instance; their k/v projections (and cross k/v LoRA) in every decoder
               layer once per task, as the model runs (``Adaptation.cross_kv``), or
               per instance with ``cached_fused_kv=False`` (an adaptation without
               cached keys/values).

The once-per-task cost of a hypernetwork model is the instruction encoder at ``Lh``
tokens (the backbone's encoder, or the hypernetwork's own) plus the hypernetwork
itself -- counted from the module for HINT, and from XLA's cost analysis of the module
for any other hypernetwork -- plus, with instruction fusion, the instruction's
cross-attention keys/values (``instruction_kv``). :func:`hint_cached` and :func:`concat_baseline` are the
two settings compared in ``benchmarks/efficiency.py``; :func:`xla_flops` is the
cross-check used by the tests.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

from hyper_tasks.models.config import T5Config
from hyper_tasks.models.hypernets import common
from hyper_tasks.models.hypernets.hint import Hint
from hyper_tasks.models.peft_spec import PeftSpec, site_module


@dataclasses.dataclass(frozen=True)
class Flops:
  """FLOPs of one model setting.

  Attributes:
    per_task: once per distinct instruction (hypernetwork + instruction encoder);
      zero for models without a hypernetwork.
    per_instance: every instance (backbone with its adaptation).
    parts: named components; keys start with ``task/`` or ``instance/``.
  """
  per_task: float = 0.0
  per_instance: float = 0.0
  parts: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def amortized(self, instances_per_task: float) -> float:
    """Per-instance cost when ``instances_per_task`` instances share an instruction."""
    return self.per_instance + self.per_task / instances_per_task

  def uncached(self) -> float:
    """Per-instance cost when the hypernetwork runs for every instance."""
    return self.per_instance + self.per_task


# -- building blocks -------------------------------------------------------------------------
def _mm(rows: float, din: float, dout: float) -> float:
  """``[rows, din] @ [din, dout]``."""
  return 2.0 * rows * din * dout


def _attn_core(cfg: T5Config, lq: float, lk: float) -> float:
  """Scores and weighted values over ``lk`` keys."""
  return 2.0 * _mm(lq, cfg.inner_dim, lk)


def _mlp(cfg: T5Config, length: float) -> float:
  wi = _mm(length, cfg.d_model, cfg.d_ff) * (2 if cfg.is_gated else 1)
  return wi + _mm(length, cfg.d_ff, cfg.d_model)


def _site_tokens(site: str, enc: float, dec: float) -> float:
  return enc if site_module(site)[0] == "encoder" else dec


def _peft_parts(cfg: T5Config, spec: PeftSpec, enc: float, dec: float,
                cross_kv: float) -> dict:
  """Adapter and LoRA matmuls and prefix attention, per instance (see module doc)."""
  parts = {"adapters": 0.0, "lora": 0.0, "prefixes": 0.0}
  for slot in spec.slots(cfg):
    if slot.stack == "prompt":
      continue  # counted as a longer encoder input
    tokens = _site_tokens(slot.site, enc, dec)
    if slot.site == "cross" and slot.name[:7] in ("lora_k_", "lora_v_"):
      tokens = cross_kv  # cross-attention keys/values project the encoder output
    if slot.name in ("adapter_down", "adapter_up"):
      parts["adapters"] += _mm(tokens, *slot.shape)
    elif slot.name.startswith("lora_"):
      parts["lora"] += _mm(tokens, *slot.shape)
    elif slot.name == "prefix_key":  # prefix_value pairs with it: counted once
      parts["prefixes"] += _attn_core(cfg, tokens, slot.shape[0])
  return parts


def forward_parts(cfg: T5Config, enc_len: int, dec_len: int,
                  spec: Optional[PeftSpec] = None, fused_len: int = 0,
                  cached_fused_kv: bool = True) -> dict:
  """Per-instance forward FLOPs by component.

  Args:
    cfg: backbone.
    enc_len: instance tokens the encoder reads (``Li``; a prompt adds to it).
    dec_len: decoder tokens (teacher forcing; for cached generation of ``Lt``
      tokens the matmul count is the same).
    spec: the adaptation's slots (None = plain T5).
    fused_len: instruction tokens the decoder cross-attends to besides the
      encoder output (HINT's instruction fusion).
    cached_fused_kv: their keys/values come precomputed per task (the default, as
      ``Transformer.encode_instruction`` makes them; see :func:`instruction_kv`),
      else they are projected for every instance.
  Returns:
    ``{"encoder", "decoder_self", "cross", "decoder_mlp", "logits", "adapters",
    "lora", "prefixes"}`` -> FLOPs.
  """
  spec = spec or PeftSpec()
  d, hk = cfg.d_model, cfg.inner_dim
  le = enc_len + (spec.prompt.num_tokens if spec.prompt else 0)
  lkv = le + fused_len  # cross-attention keys
  lproj = le if cached_fused_kv else lkv  # keys/values projected per instance
  ld = dec_len
  enc_layer = (_mm(le, d, 3 * hk) + _attn_core(cfg, le, le) + _mm(le, hk, d)
               + _mlp(cfg, le))
  parts = {
      "encoder": cfg.num_encoder_layers * enc_layer,
      "decoder_self": cfg.num_decoder_layers * (
          _mm(ld, d, 3 * hk) + _attn_core(cfg, ld, ld) + _mm(ld, hk, d)),
      "cross": cfg.num_decoder_layers * (
          _mm(ld, d, hk) + _mm(lproj, d, 2 * hk) + _attn_core(cfg, ld, lkv)
          + _mm(ld, hk, d)),
      "decoder_mlp": cfg.num_decoder_layers * _mlp(cfg, ld),
      "logits": _mm(ld, d, cfg.vocab_size),
  }
  parts.update(_peft_parts(cfg, spec, le, ld, lproj))
  return parts


def instruction_kv(cfg: T5Config, spec: Optional[PeftSpec], fused_len: int) -> float:
  """Once per task with instruction fusion: every decoder layer's cross-attention
  key/value projections of the ``fused_len`` instruction states, with the cross
  sites' k/v LoRA (``Adaptation.cross_kv``)."""
  if not fused_len:
    return 0.0
  proj = cfg.num_decoder_layers * _mm(fused_len, cfg.d_model, 2 * cfg.inner_dim)
  lora = _peft_parts(cfg, PeftSpec(lora=(spec or PeftSpec()).lora), 0, 0,
                     fused_len)["lora"]
  return proj + lora


def backbone(cfg: T5Config, enc_len: int, dec_len: int) -> Flops:
  """Plain T5 forward per instance."""
  parts = forward_parts(cfg, enc_len, dec_len)
  return Flops(0.0, sum(parts.values()),
               {f"instance/{k}": v for k, v in parts.items() if v})


def encoder_only(cfg: T5Config, length: int) -> float:
  """The encoder stack alone over ``length`` tokens (an instruction encoder)."""
  return forward_parts(cfg, length, 0)["encoder"]


def peft_overhead(cfg: T5Config, spec: PeftSpec, enc_len: int, dec_len: int,
                  fused_len: int = 0, cached_fused_kv: bool = True) -> dict:
  """Extra per-instance FLOPs over plain T5, by method (``prompt`` and ``fusion``
  are the growth of the backbone from the longer encoder / cross-attention keys;
  ``lora`` includes the cross k/v LoRA over the fused keys unless they are cached)."""
  plain = forward_parts(cfg, enc_len, dec_len)
  with_prompt = forward_parts(cfg, enc_len, dec_len,
                              PeftSpec(prompt=spec.prompt))
  full = forward_parts(cfg, enc_len, dec_len, spec, fused_len, cached_fused_kv)
  core = ("encoder", "decoder_self", "cross", "decoder_mlp", "logits")
  prompt = sum(with_prompt[k] for k in core) - sum(plain[k] for k in core)
  fusion = sum(full[k] for k in core) - sum(with_prompt[k] for k in core)
  return {"adapters": full["adapters"], "lora": full["lora"],
          "prefixes": full["prefixes"], "prompt": prompt, "fusion": fusion}


# -- hypernetworks ---------------------------------------------------------------------------
def _module(model):
  return getattr(model, "module", model)


def hint_head(hypernet, instr_len: int) -> float:
  """HINT's cost per instruction, read from the module: queries attend over the
  instruction states, then one MLP head per parameter type maps each row."""
  slots = hypernet.slots()
  groups = common.group_by_type(slots)
  layouts = {s.path: common.row_layout(s) for s in slots}
  n = sum(len(g) * layouts[g[0].path].rows for g in groups.values())
  d, hd = hypernet.dim, hypernet.config.d_model
  inner = hypernet.num_heads * hypernet.attn_head_dim()
  total = (_mm(n, d, inner) + _mm(instr_len, hd, 2 * inner)
           + 2.0 * _mm(n, inner, instr_len) + _mm(n, inner, d))
  for group in groups.values():
    lay = layouts[group[0].path]
    rows = len(group) * lay.rows
    total += _mm(rows, d, hypernet.head_hidden) + _mm(rows, hypernet.head_hidden,
                                                       lay.width)
  return total


def _hypernet_xla(hypernet, cfg: T5Config, instr_len: int) -> float:
  """XLA's count for any hypernetwork module (initialised abstractly; no compile)."""
  import jax
  import jax.numpy as jnp
  h = jax.ShapeDtypeStruct((1, instr_len, cfg.d_model), jnp.float32)
  mask = jax.ShapeDtypeStruct((1, instr_len), jnp.bool_)
  variables = jax.eval_shape(lambda: hypernet.init(
      jax.random.PRNGKey(0), jnp.zeros(h.shape), jnp.ones(mask.shape, bool)))
  return xla_flops(lambda v, x, m: hypernet.apply(v, x, m), variables, h, mask)


def hypernet_cost(model, instr_len: int) -> dict:
  """Once-per-task FLOPs of a model's hypernetwork: ``{"instruction_encoder",
  "hypernet"}`` (empty for models without one)."""
  module = _module(model)
  net = module.hypernet
  if net is None:
    return {}
  cfg = module.config
  enc_cfg = cfg
  if getattr(net, "separate_encoder", False) and getattr(net, "encoder_layers", None):
    enc_cfg = cfg.replace(num_encoder_layers=net.encoder_layers)
  head = hint_head(net, instr_len) if isinstance(net, Hint) else _hypernet_xla(
      net, cfg, instr_len)
  return {"instruction_encoder": encoder_only(enc_cfg, instr_len), "hypernet": head}


# -- model settings --------------------------------------------------------------------------
def model_flops(model, enc_len: int, dec_len: int, instr_len: int = 0) -> Flops:
  """FLOPs of a model (``EncoderDecoderModel`` or ``Transformer``) as it runs.

  Args:
    enc_len, dec_len: instance input and target lengths.
    instr_len: instruction length the hypernetwork reads (and, with instruction
      fusion, the extra cross-attention keys).
  """
  module = _module(model)
  fused = instr_len if module.instruction_fusion else 0
  parts = forward_parts(module.config, enc_len, dec_len, module.peft_spec, fused)
  task = hypernet_cost(module, instr_len) if module.hypernet is not None else {}
  if fused:
    task["instruction_kv"] = instruction_kv(module.config, module.peft_spec, fused)
  all_parts = {f"instance/{k}": v for k, v in parts.items() if v}
  all_parts.update({f"task/{k}": v for k, v in task.items()})
  return Flops(sum(task.values()), sum(parts.values()), all_parts)


def hint_cached(model, instr_len: int, enc_len: int, dec_len: int) -> Flops:
  """HINT with a cached adaptation: the hypernetwork and the fused instruction's
  cross-attention keys/values once per task (``per_task``), then the adapted
  backbone (attending to the cached instruction keys) per instance."""
  if _module(model).hypernet is None:
    raise ValueError("hint_cached: the model has no hypernetwork.")
  return model_flops(model, enc_len, dec_len, instr_len)


def concat_baseline(cfg: T5Config, instr_len: int, enc_len: int,
                    dec_len: int) -> Flops:
  """The concatenated-instruction baseline: the instruction is inside the encoder
  input, so every instance pays for ``instr_len + enc_len`` encoder tokens."""
  return backbone(cfg, instr_len + enc_len, dec_len)


# -- XLA cross-check -------------------------------------------------------------------------
def xla_flops(fn: Callable, *args: Any, compiled: bool = False) -> float:
  """XLA's FLOP estimate for ``jax.jit(fn)(*args)`` (args may be
  ``ShapeDtypeStruct``). Counts elementwise ops too, so it exceeds the analytic
  matmul count by a few percent at realistic sizes.

  ``compiled=False`` analyses the lowered (unoptimised) HLO without compiling.
  """
  import jax
  lowered = jax.jit(fn).lower(*args)
  cost = lowered.compile().cost_analysis() if compiled else lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else {}
  if not cost or "flops" not in cost:
    raise RuntimeError("XLA cost analysis returned no 'flops' on this backend.")
  return float(cost["flops"])
