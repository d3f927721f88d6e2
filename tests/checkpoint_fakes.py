"""Real-size checkpoints for configuration checks, made without real-size memory.

``write_sparse_hf_t5`` writes an HF T5 directory (``config.json``, a valid
``model.safetensors`` and optionally ``spiece.model``) whose tensors have the real
shapes of any preset; the file is sparse (zeros take no disk), so a base or XL
checkpoint costs nothing to make. Only what loaders compare is written: the first
rows of ``lm_head`` differ from ``shared`` so that an untied model reads as untied.
"""
import json
import math
import os
import shutil
import struct

import numpy as np

from hyper_tasks.convert import hf
from hyper_tasks.models import config as config_lib


def hf_shapes(cfg: config_lib.T5Config) -> dict[str, tuple[int, ...]]:
  """``{HF key: shape}`` of an HF T5 checkpoint of ``cfg``."""
  table = hf._untranslate_table(cfg)  # pylint: disable=protected-access
  ours = hf._expected_shapes(cfg)  # pylint: disable=protected-access
  return {hf_key: tuple(reversed(ours[k])) if tr == "T" else ours[k]
          for k, (hf_key, tr) in table.items()}


def write_sparse_hf_t5(path, cfg: config_lib.T5Config, spiece=None,
                       shapes=None) -> str:
  """An HF T5 directory with ``cfg``'s architecture (or ``shapes``) in sparse zeros."""
  os.makedirs(path, exist_ok=True)
  shapes = hf_shapes(cfg) if shapes is None else shapes
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf.config_to_hf(cfg), f)
  header, offset = {}, 0
  for key in sorted(shapes):
    n = math.prod(shapes[key]) * 4
    header[key] = {"dtype": "F32", "shape": list(shapes[key]),
                   "data_offsets": [offset, offset + n]}
    offset += n
  header["__metadata__"] = {"format": "pt"}
  blob = json.dumps(header).encode()
  blob += b" " * (-len(blob) % 8)
  file = os.path.join(path, "model.safetensors")
  with open(file, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    start = f.tell()
    f.truncate(start + offset)
    if "lm_head.weight" in header:
      f.seek(start + header["lm_head.weight"]["data_offsets"][0])
      f.write(np.ones(64, np.float32).tobytes())
  if spiece is not None:
    shutil.copy(spiece, os.path.join(path, "spiece.model"))
  return str(path)
