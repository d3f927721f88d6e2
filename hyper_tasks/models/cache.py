"""Per-task caching of generated adaptations: run the hypernetwork once per instruction.

At inference many instances share one instruction (one task, one template). An
:class:`AdaptationCache` keys each row of ``hyper_encoder_input_tokens`` by its
tokens up to the trailing padding, runs the (jitted) hypernetwork only for rows it has
not seen -- deduplicated within a batch and across calls -- and returns the batched
:class:`~hyper_tasks.models.adaptation.Adaptation` the uncached path would have
produced, assembled from per-instruction entries. Pass it to ``score_batch`` /
``predict_batch`` as ``adaptation=`` so the hypernetwork is skipped.

The fused instruction encoding (instruction fusion) and its cached cross-attention
keys/values are stored trimmed to the real tokens and padded back (masked) to the
length the uncached path would give, so outputs match the uncached ones. Entries are evicted least-recently-used beyond
``max_entries``. The cache is tied to one set of ``params``: build a new one after the
parameters change.
"""
from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyper_tasks.models.adaptation import Adaptation


def instruction_key(row) -> bytes:
  """Cache key of one instruction row ``[Lh]``: its tokens up to trailing padding."""
  row = np.asarray(row).astype(np.int32).reshape(-1)
  nz = np.flatnonzero(row)
  end = int(nz[-1]) + 1 if nz.size else 0
  return row[:end].tobytes()


# One jitted hypernetwork per model (a static argument), shared by every cache of
# that model: a fresh cache after a parameter update does not recompile.
_encode = jax.jit(
    lambda model, params, tokens: model.encode_instruction(params, tokens),
    static_argnums=0)


def _bucket(n: int) -> int:
  """Next power of two, so the jitted hypernetwork compiles for few batch sizes."""
  return 1 << max(n - 1, 0).bit_length()


class AdaptationCache:
  """Generated adaptations per distinct instruction.

  Args:
    model: an ``EncoderDecoderModel`` with a hypernetwork.
    params: its parameters (unboxed).
    max_entries: most instructions kept (least recently used evicted).

  Attributes:
    hits: rows served without running the hypernetwork (seen before, or a
      duplicate of an earlier row in the same call).
    misses: rows whose instruction was new.
    hypernet_runs: instructions the hypernetwork was run for (== misses).
    hypernet_calls: jitted hypernetwork invocations (one per call with new rows).
  """

  def __init__(self, model, params, max_entries: int = 1024):
    if not model.uses_instruction:
      raise ValueError("AdaptationCache needs a model with a hypernetwork.")
    if max_entries < 1:
      raise ValueError(f"max_entries must be >= 1, got {max_entries}.")
    self.model = model
    self.params = params
    self.max_entries = max_entries
    self._entries: "collections.OrderedDict[bytes, Adaptation]" = (
        collections.OrderedDict())
    self._lengths: dict[tuple, int] = {}
    self.hits = self.misses = self.hypernet_runs = self.hypernet_calls = 0

  def __len__(self) -> int:
    return len(self._entries)

  def clear(self):
    self._entries.clear()

  def encode_instruction(self, hyper_encoder_input_tokens) -> Adaptation:
    """The jitted, uncached hypernetwork: ``[B, Lh]`` -> batched ``Adaptation``."""
    return _encode(self.model, self.params, jnp.asarray(hyper_encoder_input_tokens))

  def _instruction_length(self, shape) -> int:
    """Length of the fused instruction the uncached path gives for ``shape``
    (``Lh``, or 1 for the no-instruction control); traced once per shape."""
    if shape not in self._lengths:
      out = jax.eval_shape(self.model.encode_instruction, self.params,
                           jax.ShapeDtypeStruct(shape, jnp.int32))
      self._lengths[shape] = (0 if out.instruction is None
                              else out.instruction.shape[1])
    return self._lengths[shape]

  def _store(self, key: bytes, entry: Adaptation):
    if entry.instruction is not None:
      real = np.flatnonzero(np.asarray(entry.instruction_mask))
      n = int(real[-1]) + 1 if real.size else 0
      trim = lambda x: x[:n]
      entry = entry.replace(
          instruction=entry.instruction[:n], instruction_mask=entry.instruction_mask[:n],
          cross_kv=(None if entry.cross_kv is None
                    else jax.tree.map(trim, entry.cross_kv)))
    self._entries[key] = entry

  def get(self, hyper_encoder_input_tokens) -> Adaptation:
    """Batched ``Adaptation`` for ``[B, Lh]`` instruction tokens.

    Equal (up to float reduction order) to ``model.encode_instruction``, but the
    hypernetwork runs once per instruction not seen before.
    """
    tokens = np.asarray(hyper_encoder_input_tokens)
    if tokens.ndim != 2:
      raise ValueError("hyper_encoder_input_tokens must be [batch, length], got "
                       f"shape {tokens.shape}.")
    keys = [instruction_key(row) for row in tokens]
    new: dict[bytes, int] = {}
    for i, key in enumerate(keys):
      if key in self._entries or key in new:
        self.hits += 1
      else:
        new[key] = i
        self.misses += 1
    if new:
      rows = list(new.values())
      rows += [rows[0]] * (_bucket(len(rows)) - len(rows))
      batch = self.encode_instruction(tokens[np.asarray(rows)])
      for j, key in enumerate(new):
        self._store(key, batch.index(j))
      self.hypernet_runs += len(new)
      self.hypernet_calls += 1
    entries = [self._entries[k] for k in keys]
    for key in dict.fromkeys(keys):
      self._entries.move_to_end(key)
    while len(self._entries) > self.max_entries:
      self._entries.popitem(last=False)
    return self._stack(entries, self._instruction_length(tokens.shape))

  def get_task(self, hyper_encoder_input_tokens) -> Adaptation:
    """Per-task (unbatched) ``Adaptation`` for one instruction ``[Lh]``; the
    backbone broadcasts it over any batch."""
    row = np.asarray(hyper_encoder_input_tokens).reshape(1, -1)
    return self.get(row).index(0)

  @staticmethod
  def _stack(entries: list[Adaptation], length: int) -> Adaptation:
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *[e.params for e in entries])
    if entries[0].instruction is None:
      return Adaptation(params, batched=True)

    def pad(x, value):
      extra = [(0, length - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
      return jnp.pad(x, extra, constant_values=value)
    instr = jnp.stack([pad(e.instruction, 0) for e in entries])
    mask = jnp.stack([pad(e.instruction_mask, False) for e in entries])
    cross_kv = None
    if entries[0].cross_kv is not None:  # padded keys/values are masked out
      cross_kv = jax.tree.map(lambda *xs: jnp.stack([pad(x, 0) for x in xs]),
                              *[e.cross_kv for e in entries])
    return Adaptation(params, instr, mask, cross_kv, batched=True)


def stats(cache: AdaptationCache) -> dict[str, Any]:
  """The cache's counters as a dict (for logs and reports)."""
  return {"entries": len(cache), "hits": cache.hits, "misses": cache.misses,
          "hypernet_runs": cache.hypernet_runs,
          "hypernet_calls": cache.hypernet_calls}
