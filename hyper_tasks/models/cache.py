"""The adaptation cache: run the hypernetwork once per instruction.

At inference many instances share one instruction (one task, one template). An
:class:`AdaptationCache` keys each row of ``hyper_encoder_input_tokens`` by
:func:`instruction_key` (its tokens up to the trailing padding: the one
instruction-identity function of the package), runs the jitted hypernetwork only
for rows it has not seen -- deduplicated within a call and across calls -- and
hands back what the uncached path would have produced:

* :meth:`AdaptationCache.get_task`: the per-task (unbatched)
  :class:`~hyper_tasks.models.adaptation.Adaptation` of one instruction, which
  the backbone broadcasts over any batch (a batch of one task);
* :meth:`AdaptationCache.get`: a batched ``Adaptation`` for ``[B, Lh]`` rows,
  stacked from the per-instruction entries (a batch that mixes tasks).

Pass either to ``score_batch`` / ``predict_batch`` as ``adaptation=`` so the
hypernetwork is skipped. Training-time evaluation, the evaluator, mixed-task
batches, the diagnostics and inference all use this one cache.

The fused instruction encoding (instruction fusion) and its cached
cross-attention keys/values are stored trimmed to the real tokens and padded
back (masked) to the length the uncached path gives, so outputs match the
uncached ones. The cache is bounded in bytes (``max_bytes``, the entries'
device arrays) and optionally in entries; the least recently used entries are
evicted first. It is tied to one set of ``params``: build a new one after the
parameters change (the jitted hypernetwork comes from
:mod:`~hyper_tasks.models.jit_cache`, so a new cache does not recompile).
"""
from __future__ import annotations

import collections
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hyper_tasks import tree_utils
from hyper_tasks.models import jit_cache
from hyper_tasks.models.adaptation import Adaptation

DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB of generated adaptations.


def instruction_key(row) -> bytes:
  """Identity of one instruction row ``[Lh]``: its tokens up to trailing padding."""
  row = np.asarray(row).astype(np.int32).reshape(-1)
  nz = np.flatnonzero(row)
  end = int(nz[-1]) + 1 if nz.size else 0
  return row[:end].tobytes()


def _bucket(n: int) -> int:
  """Next power of two, so the jitted hypernetwork compiles for few batch sizes."""
  return 1 << max(n - 1, 0).bit_length()


def _nbytes(entry: Adaptation) -> int:
  return sum(int(x.nbytes) for x in jax.tree.leaves(entry))


def _pad(entry: Adaptation, length: int) -> Adaptation:
  """A stored (trimmed) per-task entry padded back to ``length`` instruction
  positions (padding masked out)."""
  if entry.instruction is None:
    return entry

  def pad(x, value=0):
    extra = [(0, length - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
    return jnp.pad(x, extra, constant_values=value)
  cross_kv = (None if entry.cross_kv is None
              else jax.tree.map(pad, entry.cross_kv))
  return entry.replace(instruction=pad(entry.instruction),
                       instruction_mask=pad(entry.instruction_mask, False),
                       cross_kv=cross_kv)


class AdaptationCache:
  """Generated adaptations per distinct instruction.

  Args:
    model: an ``EncoderDecoderModel`` with a hypernetwork.
    params: its parameters (unboxed).
    max_entries: most instructions kept (None: no count limit).
    max_bytes: most bytes of stored adaptations kept (None: no limit); the
      entries a call returns are always served, even beyond it.
    encode_rows: None: new instructions are encoded in batches padded to the
      next power of two; an int: in batches of exactly this many rows (padded by
      repetition), so the jitted hypernetwork compiles for one shape (the
      evaluator passes its batch size).

  Attributes:
    hits: rows served without running the hypernetwork (seen before, or a
      duplicate of an earlier row in the same call).
    misses: rows whose instruction was new.
    hypernet_runs: instructions the hypernetwork was run for (== misses).
    hypernet_calls: calls with new rows (each runs the hypernetwork once, or
      once per ``encode_rows`` chunk).
  """

  def __init__(self, model, params, max_entries: Optional[int] = None, *,
               max_bytes: Optional[int] = DEFAULT_MAX_BYTES,
               encode_rows: Optional[int] = None):
    if not model.uses_instruction:
      raise ValueError("AdaptationCache needs a model with a hypernetwork "
                       "(model.uses_instruction is False).")
    if max_entries is not None and max_entries < 1:
      raise ValueError(f"max_entries must be >= 1, got {max_entries}.")
    if max_bytes is not None and max_bytes < 1:
      raise ValueError(f"max_bytes must be >= 1, got {max_bytes}.")
    self.model = model
    self.params = params
    self.max_entries = max_entries
    self.max_bytes = max_bytes
    self.encode_rows = None if encode_rows is None else max(1, int(encode_rows))
    self._entries: "collections.OrderedDict[bytes, Adaptation]" = (
        collections.OrderedDict())
    self._sizes: dict[bytes, int] = {}
    self.nbytes = 0
    self._lengths: dict[int, int] = {}
    # Prefetched instructions not yet asked for: counted as misses when first
    # asked for, so the counters do not depend on prefetching.
    self._fresh: set[bytes] = set()
    self.hits = self.misses = self.hypernet_runs = self.hypernet_calls = 0

  def __len__(self) -> int:
    return len(self._entries)

  def clear(self):
    self._entries.clear()
    self._sizes.clear()
    self._fresh.clear()
    self.nbytes = 0

  def holds(self, key: bytes) -> bool:
    """Whether the instruction ``key`` (``instruction_key``) is stored."""
    return key in self._entries

  def prefetch(self, hyper_encoder_input_tokens) -> int:
    """Encodes the instructions of ``[N, Lh]`` rows that are not stored, in one
    hypernetwork call (per ``encode_rows`` chunk), ahead of their use; returns
    how many were encoded. The counters count them when they are asked for."""
    tokens = np.asarray(hyper_encoder_input_tokens)
    new: dict[bytes, int] = {}
    for i, row in enumerate(tokens):
      key = instruction_key(row)
      if key not in self._entries and key not in new:
        new[key] = i
    if not new:
      return 0
    self._encode_new(tokens, new)
    self._fresh.update(new)
    self._evict()
    return len(new)

  def _encode_new(self, tokens: np.ndarray, new: dict[bytes, int]) -> None:
    """One hypernetwork call for the rows ``new`` (key -> row of ``tokens``)."""
    batch = self.encode_instruction(tokens[np.asarray(list(new.values()))])
    for j, key in enumerate(new):
      self._store(key, batch.index(j))
    self.hypernet_runs += len(new)
    self.hypernet_calls += 1

  def encode_instruction(self, hyper_encoder_input_tokens) -> Adaptation:
    """The jitted, uncached hypernetwork: ``[B, Lh]`` -> batched ``Adaptation``."""
    encode = jit_cache.method(self.model, "encode_instruction")
    tokens = np.asarray(hyper_encoder_input_tokens)
    n = len(tokens)
    rows = self.encode_rows or _bucket(n)
    parts = []
    for start in range(0, n, rows):
      chunk = tokens[start:start + rows]
      padded = np.concatenate(
          [chunk, np.repeat(chunk[-1:], rows - len(chunk), axis=0)])
      out = encode(self.params, padded)  # numpy: replicated on any mesh
      parts.append(jax.tree.map(lambda x, k=len(chunk): x[:k], out))
    if len(parts) == 1:
      return parts[0]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)

  def _instruction_length(self, length: int) -> int:
    """Length of the fused instruction the uncached path gives for ``Lh`` tokens
    (``Lh``, or 1 for the no-instruction control); traced once per length."""
    if length not in self._lengths:
      out = jax.eval_shape(self.model.encode_instruction, self.params,
                           jax.ShapeDtypeStruct((1, length), jnp.int32))
      self._lengths[length] = (0 if out.instruction is None
                               else out.instruction.shape[1])
    return self._lengths[length]

  def _store(self, key: bytes, entry: Adaptation):
    if entry.instruction is not None:
      real = np.flatnonzero(tree_utils.to_host(entry.instruction_mask))
      n = int(real[-1]) + 1 if real.size else 0
      trim = lambda x: x[:n]
      entry = entry.replace(
          instruction=entry.instruction[:n],
          instruction_mask=entry.instruction_mask[:n],
          cross_kv=(None if entry.cross_kv is None
                    else jax.tree.map(trim, entry.cross_kv)))
    self._entries[key] = entry
    self._sizes[key] = _nbytes(entry)
    self.nbytes += self._sizes[key]

  def _evict(self):
    while self._entries and (
        (self.max_entries is not None and len(self._entries) > self.max_entries)
        or (self.max_bytes is not None and self.nbytes > self.max_bytes)):
      key, _ = self._entries.popitem(last=False)
      self.nbytes -= self._sizes.pop(key)
      self._fresh.discard(key)

  def _lookup(self, tokens: np.ndarray, counts: list[int]) -> list[Adaptation]:
    """Stored entries of the rows of ``tokens`` ``[N, Lh]``, each row standing
    for ``counts[i]`` rows in the counters; runs the hypernetwork once for the
    instructions not seen before."""
    keys = [instruction_key(row) for row in tokens]
    new: dict[bytes, int] = {}
    for i, (key, count) in enumerate(zip(keys, counts)):
      if key in self._fresh:  # Prefetched: its first use counts as a miss.
        self._fresh.discard(key)
        self.misses += 1
        self.hits += count - 1
      elif key in self._entries or key in new:
        self.hits += count
      else:
        new[key] = i
        self.misses += 1
        self.hits += count - 1
    if new:
      self._encode_new(tokens, new)
    entries = [self._entries[k] for k in keys]
    for key in dict.fromkeys(keys):
      self._entries.move_to_end(key)
    self._evict()  # `entries` holds this call's adaptations: none is lost.
    return entries

  def get(self, hyper_encoder_input_tokens) -> Adaptation:
    """Batched ``Adaptation`` for ``[B, Lh]`` instruction tokens.

    Equal (up to float reduction order) to ``model.encode_instruction``, but the
    hypernetwork runs once per instruction not seen before.
    """
    tokens = np.asarray(hyper_encoder_input_tokens)
    if tokens.ndim != 2 or not len(tokens):
      raise ValueError("hyper_encoder_input_tokens must be [batch, length] with "
                       f"batch > 0, got shape {tokens.shape}.")
    entries = self._lookup(tokens, [1] * len(tokens))
    length = self._instruction_length(tokens.shape[1])
    padded = [_pad(e, length) for e in entries]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *padded)
    return stacked.replace(batched=True)

  def get_task(self, hyper_encoder_input_tokens, rows: int = 1) -> Adaptation:
    """Per-task (unbatched) ``Adaptation`` for one instruction ``[Lh]``; the
    backbone broadcasts it over any batch.

    Args:
      hyper_encoder_input_tokens: the instruction's tokens ``[Lh]``.
      rows: how many rows it serves, for the counters (as ``get`` of that many
        copies of the row would count them).
    """
    row = np.asarray(hyper_encoder_input_tokens).reshape(1, -1)
    entry, = self._lookup(row, [max(1, int(rows))])
    return _pad(entry, self._instruction_length(row.shape[1]))


def stats(cache: AdaptationCache) -> dict[str, Any]:
  """The cache's counters as a dict (for logs and reports)."""
  return {"entries": len(cache), "bytes": cache.nbytes, "hits": cache.hits,
          "misses": cache.misses, "hypernet_runs": cache.hypernet_runs,
          "hypernet_calls": cache.hypernet_calls}
