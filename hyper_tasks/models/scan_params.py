"""Per-layer parameters <-> the stacked form of ``T5Config.scan_layers``.

An unscanned stack names its layers ``<stack>/layers_<i>/...``; a scanned one holds
one ``<stack>/layers/...`` subtree whose leaves have a leading layer axis. On flat
``{path: array}`` dicts (``tree_utils.leaves_by_path``):

* :func:`stack_layers` / :func:`unstack_layers` convert a whole tree;
* :func:`adapt_to_targets` gives a checkpoint the form a restore target wants
  (stacking or unstacking only the keys the target lacks), so HF, t5x and our
  unscanned checkpoints restore into a scanned model and a scanned checkpoint into
  an unscanned one; on-disk names of the converters stay per layer.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

_PER_LAYER = re.compile(r"^(?P<stack>(?:.*/)?)layers_(?P<i>\d+)/(?P<rest>.+)$")
_STACKED = re.compile(r"^(?P<stack>(?:.*/)?)layers/(?P<rest>.+)$")


def _value(x) -> np.ndarray:
  return np.asarray(x)  # Reads lazy checkpoint tensors (convert.lazy) too.


def stack_layers(flat: Mapping[str, Any]) -> dict[str, Any]:
  """``.../layers_<i>/rest`` (i = 0..L-1) -> ``.../layers/rest`` ``[L, ...]``."""
  out, groups = {}, {}
  for key, value in flat.items():
    m = _PER_LAYER.match(key)
    if m is None:
      out[key] = value
    else:
      groups.setdefault((m["stack"], m["rest"]), {})[int(m["i"])] = value
  for (stack, rest), layers in groups.items():
    if sorted(layers) != list(range(len(layers))):
      raise ValueError(f"{stack}layers_<i>/{rest}: layers {sorted(layers)} are not "
                       f"0..{len(layers) - 1}; cannot stack them.")
    shapes = {tuple(np.shape(v)) for v in layers.values()}
    if len(shapes) != 1:
      raise ValueError(f"{stack}layers_<i>/{rest}: layers of different shapes "
                       f"{sorted(shapes)} cannot be scanned.")
    out[f"{stack}layers/{rest}"] = np.stack(
        [_value(layers[i]) for i in range(len(layers))])
  return out


def unstack_layers(flat: Mapping[str, Any]) -> dict[str, Any]:
  """``.../layers/rest`` ``[L, ...]`` -> ``.../layers_<i>/rest``."""
  out = {}
  for key, value in flat.items():
    m = _STACKED.match(key)
    if m is None:
      out[key] = value
      continue
    value = _value(value)
    for i in range(value.shape[0]):
      out[f"{m['stack']}layers_{i}/{m['rest']}"] = value[i]
  return out


def adapt_to_targets(ckpt: Mapping[str, Any], targets: Mapping[str, Any]
                     ) -> dict[str, Any]:
  """``ckpt`` with the keys ``targets`` wants and ``ckpt`` holds only in the other
  form converted (the converted sources dropped); everything else unchanged."""
  out, used = dict(ckpt), set()
  for key, target in targets.items():
    if key in out:
      continue
    m = _STACKED.match(key)
    if m is not None:
      num = int(np.shape(target)[0]) if np.shape(target) else 0
      parts = [f"{m['stack']}layers_{i}/{m['rest']}" for i in range(num)]
      if num and all(p in ckpt for p in parts):
        out[key] = np.stack([_value(ckpt[p]) for p in parts])
        used.update(parts)
      continue
    m = _PER_LAYER.match(key)
    if m is not None:
      stacked = f"{m['stack']}layers/{m['rest']}"
      if stacked in ckpt and int(m["i"]) < np.shape(ckpt[stacked])[0]:
        out[key] = _value(ckpt[stacked])[int(m["i"])]
        used.add(stacked)
  return {k: v for k, v in out.items() if k not in used or k in targets}
