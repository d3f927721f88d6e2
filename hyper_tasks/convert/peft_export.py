"""Export one task's adaptation: LoRA as a Hugging Face PEFT directory, the rest as ours.

A hypernetwork (or learned ``peft/`` parameters) gives one :class:`Adaptation` per
instruction. ``export_peft`` writes it to ``out_dir``:

  * LoRA slots -> a standard PEFT LoRA directory that ``peft.PeftModel.from_pretrained``
    loads on top of ``transformers.T5ForConditionalGeneration``:

      ``adapter_config.json``        ``peft_type: LORA``, ``task_type: SEQ_2_SEQ_LM``,
                                     ``r``, ``lora_alpha``, ``target_modules`` in HF T5
                                     names (q, k, v, o, wi, wi_0, wi_1, wo), and
                                     ``rank_pattern``/``alpha_pattern`` when ranks
                                     differ per target;
      ``adapter_model.safetensors``  ``base_model.model.<hf module>.lora_A.weight``
                                     ``[r, in]`` and ``...lora_B.weight`` ``[out, r]``
                                     (torch ``Linear`` layout: our ``A [in, r]`` and
                                     ``B [r, out]`` transposed).

    Our LoRA computes ``x @ A @ B * s`` with ``s = alpha / r`` (or 1 when the spec has
    no alpha); PEFT computes ``x A^T^T ... * lora_alpha / r``. We write ``lora_alpha``
    so the two scales agree (``lora_alpha = r`` per target when ``s = 1``) and never
    fold the scale into ``B``, so the tensors are stored bit-exact.

  * Everything PEFT's LoRA cannot hold -- adapters, prefixes, prompt, IA3 and the
    fused instruction encoding of instruction fusion -- goes to our own documented
    pair of files, which :func:`load_adaptation` reloads:

      ``hyper_tasks_adaptation.safetensors``  one tensor per slot, keyed by the slot
                                              path joined with ``/`` (e.g.
                                              ``encoder/layers_0/mlp/adapter_down``
                                              ``[D, A]``), plus ``instruction``
                                              ``[Lh, D]`` and ``instruction_mask``
                                              ``[Lh]`` (int8) with fusion;
      ``hyper_tasks_adaptation.json``         ``format``, ``version``, the
                                              ``peft_spec`` (as a dict), the backbone
                                              ``config`` (HF names), which slots are
                                              in which file.

    The instruction's cached cross-attention keys/values (``Adaptation.cross_kv``)
    are not written: they follow from the instruction and the backbone, so the
    reloaded adaptation runs the equivalent concatenated path, or
    ``EncoderDecoderModel.cache_instruction_kv(params, adaptation)`` recomputes them.

    Fused instruction states change what the decoder attends to, which no PEFT
    method expresses: a LoRA-only PEFT directory without the sidecar is therefore
    exact only for models without instruction fusion. ``lora_only=True`` makes
    ``export_peft`` refuse anything but pure LoRA, for users who need the PEFT
    directory alone to be the whole adaptation.

``export_base_model`` writes the backbone through :func:`hyper_tasks.convert.hf.save_t5`,
so the exported adapter applies to exactly the base it was trained with.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import numpy as np

from hyper_tasks.convert import hf
from hyper_tasks.models.adaptation import Adaptation
from hyper_tasks.models.peft_spec import (AdapterSpec, IA3Spec, LoraSpec, PeftSpec,
                                          PrefixSpec, PromptSpec, Slot)
from hyper_tasks.models.transformer import Transformer

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
SIDECAR_WEIGHTS = "hyper_tasks_adaptation.safetensors"
SIDECAR_META = "hyper_tasks_adaptation.json"
SIDECAR_FORMAT = "hyper_tasks.adaptation"
SIDECAR_VERSION = 1
_PEFT_PREFIX = "base_model.model."

# Our attention module -> (HF layer index, HF module) inside a block.
_HF_ATTENTION = {("encoder", "attention"): (0, "SelfAttention"),
                 ("decoder", "self_attention"): (0, "SelfAttention"),
                 ("decoder", "encoder_decoder_attention"): (1, "EncDecAttention")}
_HF_MLP_LAYER = {"encoder": 1, "decoder": 2}


class ExportError(ValueError):
  """An adaptation or model that cannot be exported as asked; says why."""


# -- slot <-> HF module names ------------------------------------------------------------
def _lora_target(slot_name: str) -> tuple[str, str]:
  """``lora_wi_0_a`` -> (``wi_0``, ``a``)."""
  return slot_name[len("lora_"):-2], slot_name[-1]


def hf_module_name(slot: Slot) -> str:
  """The HF T5 module a LoRA slot modifies, e.g.
  ``decoder.block.3.layer.1.EncDecAttention.q``."""
  stack, layer, module, name = slot.path
  i = int(layer[len("layers_"):])
  target, _ = _lora_target(name)
  if module == "mlp":
    return f"{stack}.block.{i}.layer.{_HF_MLP_LAYER[stack]}.DenseReluDense.{target}"
  j, hf_module = _HF_ATTENTION[(stack, module)]
  return f"{stack}.block.{i}.layer.{j}.{hf_module}.{target}"


def _is_lora(slot: Slot) -> bool:
  return slot.name.startswith("lora_")


# -- PeftSpec <-> json -------------------------------------------------------------------
def spec_to_dict(spec: PeftSpec) -> dict:
  return {f.name: (None if getattr(spec, f.name) is None
                   else dataclasses.asdict(getattr(spec, f.name)))
          for f in dataclasses.fields(spec)}


def _tuples(x):
  return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def spec_from_dict(d: dict, source: str = "<dict>") -> PeftSpec:
  classes = {"adapter": AdapterSpec, "prefix": PrefixSpec, "lora": LoraSpec,
             "prompt": PromptSpec, "ia3": IA3Spec}
  unknown = sorted(set(d) - set(classes))
  if unknown:
    raise ExportError(f"{source}: unknown PEFT methods {unknown} in 'peft_spec'.")
  kwargs = {}
  for name, cls in classes.items():
    if d.get(name) is not None:
      try:
        kwargs[name] = cls(**{k: _tuples(v) for k, v in d[name].items()})
      except (TypeError, ValueError) as e:
        raise ExportError(f"{source}: bad 'peft_spec.{name}': {e}") from e
  return PeftSpec(**kwargs)


# -- resolving the adaptation ------------------------------------------------------------
def _module(model):
  return getattr(model, "module", model)


def task_adaptation(model, params, hyper_encoder_input_tokens=None,
                    adaptation: Optional[Adaptation] = None) -> Adaptation:
  """The per-task (unbatched) adaptation of one instruction.

  Args:
    model: an ``EncoderDecoderModel`` (or its ``Transformer``).
    params: its parameters (unboxed).
    hyper_encoder_input_tokens: ``[Lh]`` or ``[1, Lh]`` instruction tokens, run
      through the hypernetwork; or
    adaptation: a precomputed ``Adaptation`` (per task, or batched with batch 1).
    With neither, a static-PEFT model's learned ``peft/`` slots are used.
  Raises:
    ExportError: for several instructions at once, or nothing to export.
  """
  module = _module(model)
  if adaptation is None and hyper_encoder_input_tokens is not None:
    if module.hypernet is None:
      raise ExportError("export: the model has no hypernetwork, so it takes no "
                        "instruction tokens; pass `adaptation=` or export a "
                        "static-PEFT model without tokens.")
    tokens = np.asarray(hyper_encoder_input_tokens)
    if tokens.ndim == 1:
      tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[0] != 1:
      raise ExportError("export: one instruction at a time; got "
                        f"hyper_encoder_input_tokens of shape {tokens.shape}.")
    adaptation = module.apply({"params": params}, tokens.astype(np.int32),
                              method=Transformer.encode_instruction)
  elif adaptation is None:
    adaptation = module.apply({"params": params},
                              method=type(module).static_adaptation)
    if adaptation is None:
      raise ExportError("export: nothing to export; pass `hyper_encoder_input_tokens`"
                        " (hypernetwork) or `adaptation`, or use a static-PEFT model.")
  if adaptation.batched:
    sizes = {np.shape(x)[0] for x in _leaves(adaptation)}
    if sizes != {1}:
      raise ExportError("export: one instruction at a time; the adaptation has "
                        f"batch sizes {sorted(sizes)} (use Adaptation.index(i)).")
    adaptation = adaptation.index(0)
  return adaptation


def _leaves(adaptation: Adaptation):
  import jax
  leaves = jax.tree.leaves(adaptation.params)
  if adaptation.instruction is not None:
    leaves += [adaptation.instruction, adaptation.instruction_mask]
  if adaptation.cross_kv is not None:
    leaves += jax.tree.leaves(adaptation.cross_kv)
  return leaves


def _slot_value(adaptation: Adaptation, slot: Slot) -> np.ndarray:
  node = adaptation.get(*slot.path[:-1])
  if node is None or slot.path[-1] not in node:
    raise ExportError(f"export: the adaptation lacks slot {'/'.join(slot.path)} "
                      "that the model's PEFT spec lists.")
  value = np.asarray(node[slot.path[-1]], np.float32)
  if value.shape != slot.shape:
    raise ExportError(f"export: slot {'/'.join(slot.path)} has shape {value.shape}, "
                      f"the spec says {slot.shape}.")
  return value


# -- PEFT LoRA config ----------------------------------------------------------------------
def _target_modules(spec: PeftSpec, lora_slots: list[Slot]):
  """Short HF names when they pick exactly the exported modules, else a regex."""
  modules = sorted({hf_module_name(s) for s in lora_slots})
  short = sorted({m.rsplit(".", 1)[1] for m in modules})
  if set(spec.lora.sites) == {"encoder_self", "decoder_self", "cross"}:
    return short
  # PEFT full-matches a string target against module names.
  return "|".join(m.replace(".", r"\.") for m in modules)


def lora_config_dict(spec: PeftSpec, lora_slots: list[Slot],
                     base_model_name_or_path: Optional[str]) -> dict:
  """``adapter_config.json`` contents whose scales equal ours."""
  ranks = {}
  for s in lora_slots:
    target, ab = _lora_target(s.name)
    ranks[target] = s.shape[1] if ab == "a" else s.shape[0]
  # The most common rank is the default; the rest go to rank_pattern.
  values = sorted(ranks.values())
  r = max(set(values), key=values.count)
  rank_pattern = {t: v for t, v in sorted(ranks.items()) if v != r}
  if spec.lora.alpha is None:  # our scale is 1: lora_alpha / r == 1 per target
    lora_alpha, alpha_pattern = r, dict(rank_pattern)
  else:
    lora_alpha, alpha_pattern = spec.lora.alpha, {}
  return {
      "peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM",
      "base_model_name_or_path": base_model_name_or_path,
      "r": r, "lora_alpha": lora_alpha, "lora_dropout": 0.0,
      "target_modules": _target_modules(spec, lora_slots),
      "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
      "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
      "use_dora": False, "init_lora_weights": True, "inference_mode": True,
      "modules_to_save": None, "layers_to_transform": None,
      "layers_pattern": None,
  }


# -- export ---------------------------------------------------------------------------------
def export_peft(model, params, out_dir: str, hyper_encoder_input_tokens=None,
                adaptation: Optional[Adaptation] = None,
                base_model_name_or_path: Optional[str] = None,
                lora_only: bool = False) -> dict:
  """Write one instruction's adaptation to ``out_dir`` (see the module docstring).

  Args:
    model: ``EncoderDecoderModel`` or ``Transformer`` with a non-empty PEFT spec.
    params: its parameters (unboxed).
    out_dir: created if needed.
    hyper_encoder_input_tokens: ``[Lh]`` or ``[1, Lh]``: the instruction, run
      through the hypernetwork once; or
    adaptation: a precomputed per-task ``Adaptation`` (or a batch of one).
    base_model_name_or_path: recorded in ``adapter_config.json`` (e.g. the directory
      written by :func:`export_base_model`).
    lora_only: refuse any slot (or instruction fusion) PEFT's LoRA cannot hold.
  Returns:
    ``{"peft": [files], "sidecar": [files]}`` paths written.
  Raises:
    ExportError: empty spec, several instructions, missing slots, or with
      ``lora_only`` anything but LoRA.
  """
  module = _module(model)
  spec, cfg = module.peft_spec, module.config
  if spec.is_empty and not module.instruction_fusion:
    raise ExportError("export_peft: the model has an empty PEFT spec; there is "
                      "nothing to export (export_base_model writes the backbone).")
  adapt = task_adaptation(model, params, hyper_encoder_input_tokens, adaptation)
  slots = spec.slots(cfg)
  lora = [s for s in slots if _is_lora(s)]
  other = [s for s in slots if not _is_lora(s)]
  fused = adapt.instruction is not None
  if lora_only and (other or fused):
    what = sorted({s.name for s in other}) + (["instruction fusion"] if fused else [])
    raise ExportError(
        "export_peft(lora_only=True): PEFT's LoRA cannot hold "
        f"{what}; export without lora_only to also write {SIDECAR_WEIGHTS}, which "
        "hyper_tasks.convert.peft_export.load_adaptation reloads.")
  os.makedirs(out_dir, exist_ok=True)
  from safetensors.numpy import save_file
  written = {"peft": [], "sidecar": []}
  if lora:
    tensors = {}
    for s in lora:
      key = f"{_PEFT_PREFIX}{hf_module_name(s)}.lora_{_lora_target(s.name)[1].upper()}"
      # torch Linear weights are [out, in]: A [in, r] -> [r, in], B [r, out] -> [out, r].
      tensors[key + ".weight"] = np.ascontiguousarray(_slot_value(adapt, s).T)
    path = os.path.join(out_dir, PEFT_WEIGHTS)
    save_file(tensors, path, metadata={"format": "pt"})
    cfg_path = os.path.join(out_dir, PEFT_CONFIG)
    with open(cfg_path, "w") as f:
      json.dump(lora_config_dict(spec, lora, base_model_name_or_path), f, indent=2)
    written["peft"] += [cfg_path, path]
  tensors = {"/".join(s.path): _slot_value(adapt, s) for s in other}
  if fused:
    tensors["instruction"] = np.asarray(adapt.instruction, np.float32)
    tensors["instruction_mask"] = np.asarray(adapt.instruction_mask).astype(np.int8)
  meta = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION,
          "peft_spec": spec_to_dict(spec), "config": hf.config_to_hf(cfg),
          "sidecar_slots": ["/".join(s.path) for s in other],
          "peft_lora_slots": ["/".join(s.path) for s in lora],
          "instruction_fusion": fused,
          "base_model_name_or_path": base_model_name_or_path}
  if tensors or fused:
    path = os.path.join(out_dir, SIDECAR_WEIGHTS)
    save_file(tensors, path)
    written["sidecar"].append(path)
  # The json is always written: it records the spec that load_adaptation needs.
  meta_path = os.path.join(out_dir, SIDECAR_META)
  with open(meta_path, "w") as f:
    json.dump(meta, f, indent=2)
  written["sidecar"].append(meta_path)
  return written


def export_base_model(model, params, out_dir: str) -> str:
  """The backbone as an HF T5 directory (``hf.save_t5``), the base of the adapter.

  ``hypernet/`` and ``peft/`` parameters are left out. Returns ``out_dir``.
  """
  hf.save_t5(params, _module(model).config, out_dir)
  return out_dir


# -- reload ------------------------------------------------------------------------------
def load_adaptation(path: str) -> tuple[Adaptation, PeftSpec]:
  """The per-task ``Adaptation`` (and its spec) that ``export_peft`` wrote to ``path``.

  Reads the sidecar and, for the LoRA slots, the PEFT ``adapter_model.safetensors``;
  the result is exactly the exported adaptation (run it with a model whose
  ``peft_spec`` equals the returned spec).

  Raises:
    ExportError: naming the file and key when something is missing or malformed.
  """
  from safetensors.numpy import load_file
  meta_path = os.path.join(path, SIDECAR_META)
  if not os.path.exists(meta_path):
    raise ExportError(f"{meta_path}: missing (not a hyper_tasks export directory).")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except json.JSONDecodeError as e:
    raise ExportError(f"{meta_path}: malformed JSON: {e}") from e
  if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
    raise ExportError(f"{meta_path}: 'format' is not {SIDECAR_FORMAT!r}.")
  if meta.get("version") != SIDECAR_VERSION:
    raise ExportError(f"{meta_path}: unsupported version {meta.get('version')!r} "
                      f"(this code reads {SIDECAR_VERSION}).")
  for key in ("peft_spec", "config", "sidecar_slots", "peft_lora_slots"):
    if key not in meta:
      raise ExportError(f"{meta_path}: missing field {key!r}.")
  spec = spec_from_dict(meta["peft_spec"], meta_path)
  cfg = hf.config_from_hf(meta["config"], meta_path)
  slots = {"/".join(s.path): s for s in spec.slots(cfg)}

  def read(file):
    p = os.path.join(path, file)
    if not os.path.exists(p):
      raise ExportError(f"{p}: missing ({meta_path} lists slots stored there).")
    try:
      return dict(load_file(p)), p
    except Exception as e:  # safetensors raises several types
      raise ExportError(f"{p}: cannot read safetensors file: {e}") from e

  tree: dict = {}
  instruction = instruction_mask = None
  if meta["sidecar_slots"] or meta.get("instruction_fusion"):
    tensors, p = read(SIDECAR_WEIGHTS)
    for key in meta["sidecar_slots"]:
      _put(tree, slots, key, tensors, key, p, transpose=False)
    if meta.get("instruction_fusion"):
      for key in ("instruction", "instruction_mask"):
        if key not in tensors:
          raise ExportError(f"{p}: missing tensor {key!r} (instruction fusion).")
      instruction = tensors["instruction"]
      instruction_mask = tensors["instruction_mask"].astype(bool)
  if meta["peft_lora_slots"]:
    tensors, p = read(PEFT_WEIGHTS)
    for key in meta["peft_lora_slots"]:
      if key not in slots:
        raise ExportError(f"{meta_path}: slot {key!r} is not in the recorded spec.")
      s = slots[key]
      hf_key = (f"{_PEFT_PREFIX}{hf_module_name(s)}."
                f"lora_{_lora_target(s.name)[1].upper()}.weight")
      _put(tree, slots, key, tensors, hf_key, p, transpose=True)
  return Adaptation(tree, instruction, instruction_mask, batched=False), spec


def _put(tree, slots, key, tensors, file_key, file_path, transpose):
  if key not in slots:
    raise ExportError(f"{file_path}: slot {key!r} is not in the recorded spec.")
  if file_key not in tensors:
    raise ExportError(f"{file_path}: missing tensor {file_key!r}.")
  value = tensors[file_key]
  value = value.T if transpose else value
  if tuple(value.shape) != slots[key].shape:
    raise ExportError(f"{file_path}: {file_key!r} has shape {tuple(value.shape)}, "
                      f"expected {slots[key].shape}.")
  node = tree
  for part in slots[key].path[:-1]:
    node = node.setdefault(part, {})
  node[slots[key].path[-1]] = np.ascontiguousarray(value)
