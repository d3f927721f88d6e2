"""Hugging Face T5 <-> hyper-tasks parameters, through one declarative name table.

``load_t5(path)`` reads a local HF T5 directory (``config.json`` plus
``model.safetensors``, a sharded ``model.safetensors.index.json``, or
``pytorch_model.bin`` when torch is installed) and returns ``(Transformer, params)``.
``save_t5(params, config, path)`` writes the reverse, which ``transformers`` loads.
``lazy_params(path)`` checks a directory from its headers and returns each tensor
as a ``convert.lazy.LazyArray``, read when a restore places it (no full host copy).
The name table and its readers and writers form one cohesive module.

Every HF key must match exactly one rule of ``_RULES`` and every one of our parameters
must be filled, or loading fails naming the file and keys: nothing is half-loaded.
"""
from __future__ import annotations

import functools
import json
import os
import re
from typing import Any

import numpy as np

from hyper_tasks.convert import lazy
from hyper_tasks.models.config import T5Config
from hyper_tasks.models.transformer import Transformer

# (HF regex, our path template, transform). "T" transposes torch's [out, in] linears
# (and the [buckets, heads] bias table) to t5x's [in, out] / [heads, buckets].
_ATTN = {"q": "query", "k": "key", "v": "value", "o": "out"}
_RULES: list[tuple[str, str, str]] = [
    (r"shared\.weight", "token_embedder/embedding", ""),
    (r"lm_head\.weight", "decoder/logits_dense/kernel", "T"),
    (r"(encoder|decoder)\.final_layer_norm\.weight", "{0}/{0}_norm/scale", ""),
    (r"(encoder|decoder)\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias"
     r"\.weight", "{0}/relpos_bias/rel_embedding", "T"),
    (r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight",
     "encoder/layers_{0}/attention/{1}/kernel", "T"),
    (r"encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight",
     "encoder/layers_{0}/pre_attention_layer_norm/scale", ""),
    (r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.(wi|wo|wi_0|wi_1)\.weight",
     "encoder/layers_{0}/mlp/{1}/kernel", "T"),
    (r"encoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight",
     "encoder/layers_{0}/pre_mlp_layer_norm/scale", ""),
    (r"decoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight",
     "decoder/layers_{0}/self_attention/{1}/kernel", "T"),
    (r"decoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight",
     "decoder/layers_{0}/pre_self_attention_layer_norm/scale", ""),
    (r"decoder\.block\.(\d+)\.layer\.1\.EncDecAttention\.([qkvo])\.weight",
     "decoder/layers_{0}/encoder_decoder_attention/{1}/kernel", "T"),
    (r"decoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight",
     "decoder/layers_{0}/pre_cross_attention_layer_norm/scale", ""),
    (r"decoder\.block\.(\d+)\.layer\.2\.DenseReluDense\.(wi|wo|wi_0|wi_1)\.weight",
     "decoder/layers_{0}/mlp/{1}/kernel", "T"),
    (r"decoder\.block\.(\d+)\.layer\.2\.layer_norm\.weight",
     "decoder/layers_{0}/pre_mlp_layer_norm/scale", ""),
]
# Copies of ``shared.weight`` that HF may or may not serialise.
_TIED_COPIES = (r"encoder\.embed_tokens\.weight", r"decoder\.embed_tokens\.weight")
_SUPPORTED_TYPES = ("t5", "mt5", "umt5_disabled")
_SUPPORTED_FF = ("relu", "gelu", "gated-gelu", "gated-relu", "gated-silu")


class ConversionError(ValueError):
  """A checkpoint that cannot be converted; the message names the file and keys."""


def _translate(hf_key: str) -> tuple[str, str] | None:
  for pattern, template, transform in _RULES:
    m = re.fullmatch(pattern, hf_key)
    if m:
      groups = [_ATTN.get(g, g) for g in m.groups()]
      return template.format(*groups), transform
  return None


def _untranslate_table(cfg: T5Config) -> dict[str, tuple[str, str]]:
  """Our path -> (HF key, transform), for every parameter of ``cfg``."""
  keys = ["shared.weight", "encoder.final_layer_norm.weight",
          "decoder.final_layer_norm.weight"]
  if not cfg.tie_word_embeddings:
    keys.append("lm_head.weight")
  mlp = ("wi_0", "wi_1", "wo") if cfg.is_gated else ("wi", "wo")
  for stack, n, layers in (("encoder", cfg.num_encoder_layers,
                            (("SelfAttention", 0),)),
                           ("decoder", cfg.num_decoder_layers,
                            (("SelfAttention", 0), ("EncDecAttention", 1)))):
    keys.append(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    for i in range(n):
      for module, j in layers:
        keys += [f"{stack}.block.{i}.layer.{j}.{module}.{p}.weight" for p in "qkvo"]
        keys.append(f"{stack}.block.{i}.layer.{j}.layer_norm.weight")
      j = len(layers)
      keys += [f"{stack}.block.{i}.layer.{j}.DenseReluDense.{p}.weight" for p in mlp]
      keys.append(f"{stack}.block.{i}.layer.{j}.layer_norm.weight")
  table = {}
  for k in keys:
    ours, transform = _translate(k)
    table[ours] = (k, transform)
  return table


def config_from_hf(hf: dict, source: str = "config.json", **overrides) -> T5Config:
  """Our ``T5Config`` from an HF ``config.json`` dict; rejects non-T5 architectures."""
  model_type = hf.get("model_type")
  if model_type not in _SUPPORTED_TYPES or not hf.get("is_encoder_decoder", True):
    raise ConversionError(
        f"{source}: unsupported architecture model_type={model_type!r} "
        f"(architectures={hf.get('architectures')}); only T5/mT5 encoder-decoders "
        "are supported.")
  for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
    if key not in hf:
      raise ConversionError(f"{source}: missing required field {key!r}.")
    if isinstance(hf[key], bool) or not isinstance(hf[key], int) or hf[key] <= 0:
      raise ConversionError(f"{source}: field {key!r} must be a positive integer, "
                            f"got {hf[key]!r}.")
  ff = hf.get("feed_forward_proj", "relu")
  if ff not in _SUPPORTED_FF:
    raise ConversionError(f"{source}: unsupported feed_forward_proj {ff!r}.")
  # transformers <5: tie_word_embeddings means "tied and scaled"; transformers 5 adds
  # scale_decoder_outputs and always ties unless the weights differ (see _read_state).
  scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
  kwargs = dict(
      scale_decoder_outputs=bool(scale),
      vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_kv=hf["d_kv"],
      d_ff=hf["d_ff"], num_heads=hf["num_heads"],
      num_encoder_layers=hf["num_layers"],
      num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
      feed_forward_proj=ff,
      tie_word_embeddings=hf.get("tie_word_embeddings", True),
      relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
      layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
      dropout_rate=hf.get("dropout_rate", 0.1),
      pad_id=hf.get("pad_token_id", 0) or 0,
      eos_id=hf.get("eos_token_id", 1) if hf.get("eos_token_id") is not None else 1,
      decoder_start_id=hf.get("decoder_start_token_id", 0) or 0)
  kwargs.update(overrides)
  return T5Config(**kwargs)


def config_to_hf(cfg: T5Config) -> dict:
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
      "is_encoder_decoder": True, "vocab_size": cfg.vocab_size,
      "d_model": cfg.d_model, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff,
      "num_layers": cfg.num_encoder_layers,
      "num_decoder_layers": cfg.num_decoder_layers, "num_heads": cfg.num_heads,
      "feed_forward_proj": cfg.feed_forward_proj,
      # Written so both transformers 4 and 5 read the same model (see save_t5).
      "tie_word_embeddings": cfg.tie_word_embeddings and cfg.scales_logits,
      "scale_decoder_outputs": cfg.scales_logits,
      "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
      "relative_attention_max_distance": cfg.relative_attention_max_distance,
      "layer_norm_epsilon": cfg.layer_norm_epsilon, "dropout_rate": cfg.dropout_rate,
      "pad_token_id": cfg.pad_id, "eos_token_id": cfg.eos_id,
      "decoder_start_token_id": cfg.decoder_start_id, "initializer_factor": 1.0,
      "use_cache": True,
  }


def _read_state(path: str) -> tuple[dict[str, np.ndarray], str]:
  """All tensors of an HF directory as numpy, plus the file they came from."""
  st = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  binf = os.path.join(path, "pytorch_model.bin")
  from safetensors.numpy import load_file
  if os.path.exists(st):
    try:
      return dict(load_file(st)), st
    except Exception as e:  # safetensors raises several types
      raise ConversionError(f"{st}: cannot read safetensors file: {e}") from e
  if os.path.exists(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
      raise ConversionError(f"{index}: malformed index (needs a 'weight_map' of "
                            f"key -> shard file): {e!r}") from e
    state = {}
    for shard in shards:
      shard_path = os.path.join(path, shard)
      if not os.path.exists(shard_path):
        raise ConversionError(f"{index}: shard {shard!r} is missing ({shard_path}).")
      try:
        state.update(load_file(shard_path))
      except Exception as e:  # safetensors raises several types
        raise ConversionError(f"{shard_path}: cannot read safetensors file: {e}"
                              ) from e
    return state, index
  if os.path.exists(binf):
    try:
      import torch
    except ImportError as e:
      raise ConversionError(f"{binf}: reading pytorch_model.bin needs torch "
                            "(pip install torch), or convert it to safetensors.") from e
    try:
      sd = torch.load(binf, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of several types
      raise ConversionError(f"{binf}: cannot read PyTorch state dict: {e}") from e
    if not isinstance(sd, dict):
      raise ConversionError(f"{binf}: expected a state dict, got {type(sd).__name__}.")
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            for k, v in sd.items()}, binf
  raise ConversionError(f"{path}: no model.safetensors, model.safetensors.index.json "
                        "or pytorch_model.bin found.")


def params_from_hf_state(state: dict[str, np.ndarray], cfg: T5Config,
                         source: str = "<state dict>") -> dict:
  """Translate an HF state dict to our nested params (float32 numpy)."""
  table = _untranslate_table(cfg)
  wanted = {hf_key: (ours, tr) for ours, (hf_key, tr) in table.items()}
  flat, unmapped = {}, []
  for key, value in state.items():
    if any(re.fullmatch(p, key) for p in _TIED_COPIES):
      continue
    if key == "lm_head.weight" and cfg.tie_word_embeddings:
      continue  # tied: the output layer is the shared embedding
    if key not in wanted:
      unmapped.append(key)
      continue
    ours, transform = wanted[key]
    arr = np.asarray(value, dtype=np.float32)
    if transform == "T":
      arr = arr.T
    flat[ours] = arr
  _check_translated(table, {k: tuple(v.shape) for k, v in flat.items()}, unmapped,
                    cfg, source)
  return _unflatten(flat)


def _check_translated(table: dict, shapes: dict[str, tuple[int, ...]],
                      unmapped: list[str], cfg: T5Config, source: str) -> None:
  """Raises naming unmapped HF keys, missing parameters or mis-shaped ones."""
  if unmapped:
    raise ConversionError(f"{source}: unmapped keys for this config: "
                          f"{sorted(unmapped)}")
  missing = sorted(set(table) - set(shapes))
  if missing:
    raise ConversionError(f"{source}: missing keys "
                          f"{sorted(table[m][0] for m in missing)}")
  expected = _expected_shapes(cfg)
  bad = [f"{table[k][0]} -> {k}: expected {expected[k]}, got {v}"
         for k, v in shapes.items() if expected[k] != v]
  if bad:
    raise ConversionError(f"{source}: shape mismatch: " + "; ".join(bad))


def params_to_hf_state(params: dict, cfg: T5Config) -> dict[str, np.ndarray]:
  table = _untranslate_table(cfg)
  flat = _flatten(params)
  out = {}
  for ours, (hf_key, transform) in table.items():
    if ours not in flat:
      raise ConversionError(f"params: missing {ours}")
    arr = np.asarray(flat[ours], dtype=np.float32)
    out[hf_key] = np.ascontiguousarray(arr.T if transform == "T" else arr)
  return out


def load_t5(path: str, dtype: Any = None, **config_overrides):
  """``(Transformer, params)`` from a local HF T5 directory.

  Args:
    path: directory with ``config.json`` and weights.
    dtype: computation dtype (parameters stay float32); default float32.
    **config_overrides: e.g. ``dropout_rate=0.0``.
  Raises:
    ConversionError: naming the file and keys when anything does not fit.
  """
  hf_cfg, cfg_path = _read_json_config(path)
  # Reject unsupported architectures before touching (possibly huge) weights.
  config_from_hf(hf_cfg, cfg_path)
  if dtype is not None:
    config_overrides["dtype"] = dtype
  state, source = _read_state(path)
  # Untied exactly when the file holds an output layer that differs from the input
  # embedding; the config flag alone is ambiguous across transformers versions.
  lm_head, shared = state.get("lm_head.weight"), state.get("shared.weight")
  tied = lm_head is None or (shared is not None and np.array_equal(
      np.asarray(lm_head), np.asarray(shared)))
  config_overrides.setdefault("tie_word_embeddings", tied)
  cfg = config_from_hf(hf_cfg, cfg_path, **config_overrides)
  params = params_from_hf_state(state, cfg, source)
  return Transformer(cfg), params


def _read_json_config(path: str) -> tuple[dict, str]:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isdir(path):
    raise ConversionError(f"{path}: not a directory.")
  if not os.path.exists(cfg_path):
    raise ConversionError(f"{cfg_path}: missing (not an HF model directory).")
  try:
    with open(cfg_path) as f:
      hf_cfg = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConversionError(f"{cfg_path}: malformed JSON: {e}") from e
  if not isinstance(hf_cfg, dict):
    raise ConversionError(f"{cfg_path}: expected a JSON object, got "
                          f"{type(hf_cfg).__name__}.")
  return hf_cfg, cfg_path


def _tensor_shapes(path: str) -> tuple[dict[str, tuple[tuple[int, ...], str]], Any,
                                       str]:
  """``({HF key: (shape, dtype name)}, reader for a few rows, source)`` from the
  file headers only (safetensors) or a memory-mapped state dict (torch)."""
  st = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  binf = os.path.join(path, "pytorch_model.bin")
  from safetensors import safe_open
  if os.path.exists(st) or os.path.exists(index):
    if os.path.exists(st):
      files, source = [st], st
    else:
      try:
        with open(index) as f:
          files = sorted({os.path.join(path, v)
                          for v in json.load(f)["weight_map"].values()})
      except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ConversionError(f"{index}: malformed index: {e!r}") from e
      source = index
    shapes, where = {}, {}
    for file in files:
      if not os.path.exists(file):
        raise ConversionError(f"{source}: shard {file} is missing.")
      try:
        with safe_open(file, framework="numpy") as f:
          for key in f.keys():
            sl = f.get_slice(key)
            shapes[key] = (tuple(sl.get_shape()), sl.get_dtype())
            where[key] = file
      except Exception as e:  # safetensors raises several types
        raise ConversionError(f"{file}: cannot read safetensors header: {e}") from e

    def rows(key, n):
      """The first ``n`` rows of tensor ``key`` (all of it when ``n`` is None)."""
      with safe_open(where[key], framework="numpy") as f:
        if n is None:
          return np.asarray(f.get_tensor(key), np.float32)
        return np.asarray(f.get_slice(key)[:n], np.float32)
    return shapes, rows, source
  if os.path.exists(binf):
    try:
      import torch
      sd = torch.load(binf, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # ImportError, pickle/zip errors
      raise ConversionError(f"{binf}: cannot read PyTorch state dict: {e}") from e
    return ({k: (tuple(v.shape), str(v.dtype)) for k, v in sd.items()},
            lambda key, n: (sd[key] if n is None else sd[key][:n]).float().numpy(),
            binf)
  raise ConversionError(f"{path}: no model.safetensors, model.safetensors.index.json "
                        "or pytorch_model.bin found.")


def _translated_headers(path: str):
  """``(config, {our path: shape}, {our path: (HF key, transform)}, read(HF key,
  rows or None))`` of an HF directory, from the headers only (see
  :func:`read_param_shapes`)."""
  hf_cfg, cfg_path = _read_json_config(path)
  config_from_hf(hf_cfg, cfg_path)
  shapes, rows, source = _tensor_shapes(path)
  tied = "lm_head.weight" not in shapes or ("shared.weight" in shapes and np.array_equal(
      rows("lm_head.weight", 4), rows("shared.weight", 4)))
  cfg = config_from_hf(hf_cfg, cfg_path, tie_word_embeddings=tied)
  table = _untranslate_table(cfg)
  wanted = {hf_key: (ours, tr) for ours, (hf_key, tr) in table.items()}
  out, where, unmapped = {}, {}, []
  for key, (shape, _) in shapes.items():
    if any(re.fullmatch(p, key) for p in _TIED_COPIES) or (
        key == "lm_head.weight" and tied):
      continue
    if key not in wanted:
      unmapped.append(key)
      continue
    ours, transform = wanted[key]
    out[ours] = tuple(reversed(shape)) if transform == "T" else tuple(shape)
    where[ours] = (key, transform)
  _check_translated(table, out, unmapped, cfg, source)
  return cfg, out, where, rows


def read_param_shapes(path: str) -> tuple[T5Config, dict[str, tuple[int, ...]]]:
  """``(config, {our parameter path: shape})`` of an HF T5 directory, checked
  against its config, without reading the weights (headers only; the tie check
  compares the first rows of ``lm_head`` and ``shared``).

  Raises:
    ConversionError: as :func:`load_t5` would, naming the file and keys.
  """
  cfg, shapes, _, _ = _translated_headers(path)
  return cfg, shapes


def lazy_params(path: str) -> tuple[T5Config, dict[str, lazy.LazyArray]]:
  """``(config, {our flat parameter path: LazyArray})`` of an HF T5 directory:
  checked from the headers (as :func:`read_param_shapes`), each tensor read
  (float32, transposed to our layout) only when it is used, so a restore can
  place it on its devices and drop it before reading the next."""
  cfg, shapes, where, rows = _translated_headers(path)
  return cfg, {ours: lazy.LazyArray(
      shapes[ours], np.float32, functools.partial(rows, key, None),
      transpose=transform == "T") for ours, (key, transform) in where.items()}


def save_t5(params: dict, cfg: T5Config, path: str) -> None:
  """Write ``config.json`` + ``model.safetensors`` that ``transformers`` loads."""
  from safetensors.numpy import save_file
  os.makedirs(path, exist_ok=True)
  backbone = {k: v for k, v in params.items() if k not in ("hypernet", "peft")}
  state = params_to_hf_state(backbone, cfg)
  if cfg.tie_word_embeddings and not cfg.scales_logits:
    # Tied but unscaled has no transformers-4 spelling: store the output layer
    # explicitly (equal to the embedding), which both versions load as intended.
    state["lm_head.weight"] = state["shared.weight"].copy()
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_to_hf(cfg), f, indent=2)
  save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def _expected_shapes(cfg: T5Config) -> dict[str, tuple[int, ...]]:
  import jax
  import jax.numpy as jnp
  import flax.linen as nn
  model = Transformer(cfg)
  shapes = jax.eval_shape(
      lambda: nn.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32),
                                  jnp.ones((1, 2), jnp.int32))["params"]))
  return {k: tuple(v.shape) for k, v in _flatten(shapes).items()}


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}/{k}" if prefix else k
    if isinstance(v, dict):
      out.update(_flatten(v, key))
    else:
      out[key] = v
  return out


def _unflatten(flat: dict) -> dict:
  out: dict = {}
  for key, v in flat.items():
    node = out
    parts = key.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return out
