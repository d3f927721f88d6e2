"""Read t5x checkpoints (msgpack + tensorstore) into flat parameter dicts.

A t5x checkpoint is one msgpack file, ``checkpoint``, written with
``flax.serialization.to_bytes({'version': 3, 'optimizer': state_dict})``:

    optimizer/target/<param path>                           parameters
    optimizer/state/step                                    int32 []
    optimizer/state/param_states/<param path>/{v_row,v_col,v,m}   Adafactor

Small or unpartitioned arrays sit inline (flax's msgpack ext type for ndarrays,
decoded by ``flax.serialization.msgpack_restore``). Partitioned arrays were written to
zarr stores by tensorstore, one per array, in directories beside the file named after
the path with '.' for '/' (``target.decoder.layers_0.mlp.wi_0.kernel``); the msgpack
holds that store's tensorstore spec as a dict (keys ``driver``, ``kvstore``,
``metadata``, often ``dtype``) whose path is *relative* to the checkpoint directory.
Older specs keep the path at the top level; checkpoints written to GCS use the
``gcs`` kvstore driver with a dummy bucket. :func:`load_t5x_checkpoint` rewrites such
specs to local ``file`` specs under the checkpoint directory and reads them.

Paths may be the msgpack file, a ``checkpoint_<step>`` directory, or a model
directory holding ``checkpoint_<step>`` directories (latest, or ``step=``).

This module only reads files. Copying t5x's Adafactor statistics into our grouped
optimizer's state (whose per-parameter ``v_row``/``v_col``/``v``/``m`` layout mirrors
t5x's) is the trainer's optimizer-state restore, ``train/opt_state_restore.py``.
"""
from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
from flax import serialization

from hyper_tasks import tree_utils

_CHECKPOINT_FILE = "checkpoint"
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")


def is_tensorstore_spec(value: Any) -> bool:
  """t5x's test for a serialized spec: a dict with driver, kvstore and metadata."""
  return isinstance(value, Mapping) and {"driver", "kvstore", "metadata"} <= set(value)


def checkpoint_steps(model_dir: str) -> list[int]:
  """Steps of the ``checkpoint_<step>/checkpoint`` files under ``model_dir``."""
  steps = []
  for name in os.listdir(model_dir):
    m = _STEP_DIR.match(name)
    if m and os.path.isfile(os.path.join(model_dir, name, _CHECKPOINT_FILE)):
      steps.append(int(m.group(1)))
  return sorted(steps)


def find_checkpoint_file(path: str, step: Optional[int] = None) -> str:
  """Resolves a file, a ``checkpoint_<step>`` dir or a model dir to the msgpack file."""
  if os.path.isfile(path):
    return path
  if not os.path.isdir(path):
    raise FileNotFoundError(f"No t5x checkpoint at {path!r}.")
  direct = os.path.join(path, _CHECKPOINT_FILE)
  if step is None and os.path.isfile(direct):
    return direct
  steps = checkpoint_steps(path)
  if not steps:
    raise FileNotFoundError(f"{path!r} has neither a {_CHECKPOINT_FILE!r} file nor "
                            "checkpoint_<step> directories.")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f"No checkpoint_{step} in {path!r}; have {steps}.")
  return os.path.join(path, f"checkpoint_{step}", _CHECKPOINT_FILE)


def _local_spec(spec: Mapping[str, Any], ckpt_dir: str) -> dict[str, Any]:
  """A spec with its relative path made absolute under ``ckpt_dir``, on local files.

  Chunking and compression are dropped from the metadata: they are read from the
  store itself, and keeping them would make ``ts.open`` fail if they differ.
  """
  spec = copy.deepcopy(dict(spec))
  kvstore = spec.get("kvstore")
  if isinstance(kvstore, Mapping) and "path" in kvstore:
    rel = kvstore["path"]
  elif "path" in spec:  # tensorstore < 0.1.14 layout.
    rel = spec.pop("path")
  else:
    raise ValueError(f"Tensorstore spec without a path: {spec}")
  if os.path.isabs(rel):  # Absolute paths from elsewhere: keep the last component.
    rel = os.path.basename(rel.rstrip("/"))
  # gcs/gfile/file all become a local file store; t5x does the same when a GCS
  # checkpoint is read locally.
  spec["kvstore"] = {"driver": "file", "path": os.path.join(ckpt_dir, rel)}
  metadata = dict(spec.get("metadata", {}))
  metadata.pop("chunks", None)
  metadata.pop("compressor", None)
  spec["metadata"] = metadata
  return spec


def _read_tensorstore(spec: Mapping[str, Any], ckpt_dir: str, name: str) -> np.ndarray:
  import tensorstore as ts  # Only directory checkpoints need it.

  local = _local_spec(spec, ckpt_dir)
  if local.get("dtype") == "uint16" or local["metadata"].get("dtype") == "<u2":
    raise ValueError(f"{name}: uint16-encoded bfloat16 (t5x checkpoint version < 3) "
                     "is not supported.")
  path = local["kvstore"]["path"]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{name}: tensorstore array directory {path!r} is missing.")
  store = ts.open(local, open=True).result()
  arr = np.asarray(store.read().result())
  expected = local["metadata"].get("shape")
  if expected is not None and tuple(expected) != arr.shape:
    raise ValueError(f"{name}: spec shape {tuple(expected)} but read {arr.shape}.")
  return arr


def _read_msgpack(path: str, step: Optional[int]) -> tuple[dict[str, Any], str]:
  """``({flat key: inline array or tensorstore spec}, checkpoint directory)`` of
  the optimizer state dict; tensorstore arrays are not read."""
  ckpt_file = find_checkpoint_file(path, step)
  with open(ckpt_file, "rb") as f:
    contents = serialization.msgpack_restore(f.read())
  version = contents.get("version", 0) if isinstance(contents, Mapping) else 0
  if 0 < version < 2:
    raise ValueError(f"t5x checkpoint version {version} is not supported (< 2).")
  # Version 0 is a plain flax checkpoint: the optimizer state is the root.
  optimizer = contents if version == 0 else contents["optimizer"]
  return (tree_utils.flatten(optimizer, is_leaf=is_tensorstore_spec),
          os.path.dirname(os.path.abspath(ckpt_file)))


def _split_target(flat: Mapping[str, Any], path: str
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
  """``({parameter path: value} from ``target/...``, {other key: value})``."""
  params, rest = {}, {}
  for key, value in flat.items():
    if key.startswith("target/"):
      params[key[len("target/"):]] = value
    else:
      rest[key] = value
  if not params:
    raise ValueError(f"No 'target' parameters in the t5x checkpoint at {path!r}.")
  return params, rest


def read_t5x_state(path: str, step: Optional[int] = None) -> dict[str, Any]:
  """The optimizer state dict, flat (``target/...``, ``state/...``), arrays read."""
  flat, ckpt_dir = _read_msgpack(path, step)
  return {k: (_read_tensorstore(v, ckpt_dir, k) if is_tensorstore_spec(v)
              else np.asarray(v))
          for k, v in flat.items()}


def read_param_shapes(path: str, step: Optional[int] = None
                      ) -> tuple[dict[str, tuple[int, ...]], list[str]]:
  """``({parameter path: shape}, optimizer-state keys)`` of a t5x checkpoint,
  without reading tensorstore arrays (their shapes come from the specs)."""
  flat, _ = _read_msgpack(path, step)
  shapes = {k: (tuple(v["metadata"]["shape"]) if is_tensorstore_spec(v)
                else tuple(np.shape(v))) for k, v in flat.items()}
  params, rest = _split_target(shapes, path)
  return params, list(rest)


def load_t5x_checkpoint(path: str, step: Optional[int] = None,
                        restore_dtype: Any = None
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                   Optional[int]]:
  """Reads a t5x checkpoint.

  Args:
    path: the msgpack file, a ``checkpoint_<step>`` directory, or a model directory.
    step: which ``checkpoint_<step>`` of a model directory (default: latest).
    restore_dtype: optional dtype to cast the parameters (not the optimizer state).

  Returns:
    ``(params, optimizer_state, step)``: ``params`` keyed by t5x parameter paths
    (``encoder/layers_0/attention/query/kernel``); ``optimizer_state`` keyed by the
    rest of the optimizer state dict (``state/step``,
    ``state/param_states/<param path>/v_row``, ...); ``step`` from ``state/step``
    (None if absent).
  """
  params, opt_state = _split_target(read_t5x_state(path, step), path)
  if restore_dtype is not None:
    params = {k: v.astype(restore_dtype) for k, v in params.items()}
  ckpt_step = opt_state.get("state/step")
  return params, opt_state, None if ckpt_step is None else int(ckpt_step)


def adafactor_state(opt_state: Mapping[str, np.ndarray], param_path: str
                    ) -> dict[str, np.ndarray]:
  """``{'v_row', 'v_col', 'v', 'm'}`` of one parameter from ``optimizer_state``."""
  prefix = f"state/param_states/{param_path}/"
  out = {k[len(prefix):]: v for k, v in opt_state.items() if k.startswith(prefix)}
  if not out:
    raise KeyError(f"No Adafactor state for {param_path!r}.")
  return out
