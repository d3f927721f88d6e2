"""A minimal per-instruction adaptation cache for the evaluator.

HINT's inference saving is that the hypernetwork reads an instruction once and
its generated parameters serve every instance of the task. The evaluator asks a
cache for the adaptation of each batch's rows; the cache runs the hypernetwork
only for instructions it has not seen and counts what it did:

  hypernet_runs  instructions encoded (rows of `encode_instruction` that were
                 not padding)
  misses         row lookups that had to run the hypernetwork (== runs)
  hits           row lookups served from the cache

so that over one evaluation `hits == rows - distinct instructions` when no
entry is evicted.

The evaluator prefers the shared `hyper_tasks.models.cache.AdaptationCache`
(same interface: `get(hyper_tokens [B, Lh]) -> batched Adaptation` and the
three counters), adapted so that its jitted hypernetwork compiles once per
model rather than once per cache; `make_cache` picks it and falls back to
`LocalAdaptationCache` where it is absent.
"""

from __future__ import annotations

import collections
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hyper_tasks.models.adaptation import Adaptation


class LocalAdaptationCache:
  """Per-instruction `Adaptation`s keyed by the instruction's token row.

  Args:
    model: an `EncoderDecoderModel` with a hypernetwork.
    params: its parameters.
    encode_batch_size: instructions per `encode_instruction` call; misses are
      padded to this many rows so the jitted encoder compiles once.
    max_entries: least-recently-used entries beyond this are evicted (None:
      keep all). The evaluator orders rows by instruction, so an instruction
      never recurs after its rows are done and a small bound costs no extra
      hypernetwork runs.
    encode_fn: optional jitted `(params, hyper_tokens [B, Lh]) -> Adaptation`,
      shared across caches so evaluations during training compile it once.
  """

  def __init__(self, model, params, *, encode_batch_size: int = 32,
               max_entries: Optional[int] = None, encode_fn=None):
    if not model.uses_instruction:
      raise ValueError("LocalAdaptationCache needs a model with a hypernetwork "
                       "(model.uses_instruction is False).")
    self._params = params
    self._encode = encode_fn or jax.jit(model.encode_instruction)
    self._batch_size = max(1, int(encode_batch_size))
    self._max_entries = max_entries
    self._entries: collections.OrderedDict[bytes, Adaptation] = (
        collections.OrderedDict())
    self.hypernet_runs = 0
    self.hits = 0
    self.misses = 0

  def __len__(self) -> int:
    return len(self._entries)

  def _encode_missing(self, rows: list[np.ndarray], keys: list[bytes]) -> None:
    for start in range(0, len(rows), self._batch_size):
      chunk = rows[start:start + self._batch_size]
      pad = [chunk[-1]] * (self._batch_size - len(chunk))
      adaptation = self._encode(self._params, np.stack(chunk + pad))
      for j, key in enumerate(keys[start:start + len(chunk)]):
        self._entries[key] = adaptation.index(j)
      self.hypernet_runs += len(chunk)

  def get(self, hyper_tokens: Any) -> Adaptation:
    """Per-example adaptation of each row.

    Args:
      hyper_tokens: `[B, Lh]` int instruction tokens.

    Returns:
      A batched `Adaptation` (leading `[B]` on every leaf).
    """
    tokens = np.ascontiguousarray(np.asarray(hyper_tokens), dtype=np.int32)
    if tokens.ndim != 2 or not len(tokens):
      raise ValueError(f"hyper_tokens must be [B, Lh] with B > 0, got shape "
                       f"{tokens.shape}.")
    keys = [row.tobytes() for row in tokens]
    missing_keys, missing_rows = [], []
    for key, row in zip(keys, tokens):
      if key in self._entries or key in missing_keys:
        self.hits += 1
      else:
        self.misses += 1
        missing_keys.append(key)
        missing_rows.append(row)
    self._encode_missing(missing_rows, missing_keys)
    entries = []
    for key in keys:
      self._entries.move_to_end(key)
      entries.append(self._entries[key])
    if self._max_entries is not None:
      # `entries` already holds this batch's adaptations, so evicting now
      # cannot lose one of them.
      while len(self._entries) > self._max_entries:
        self._entries.popitem(last=False)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *entries)
    return stacked.replace(batched=True)


def _shared_cache_class():
  """`AdaptationCache` adapted to the evaluator, or None if it does not exist."""
  try:
    from hyper_tasks.models.cache import AdaptationCache  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None

  class EvaluatorAdaptationCache(AdaptationCache):
    """The shared cache, encoding through the evaluator's jitted function.

    The base class jits the hypernetwork per cache instance and per
    power-of-two count of new instructions; evaluation builds one cache per
    run (the parameters change between runs during training), so that would
    recompile every run. Here the jitted function is the model's (compiled
    once) and always sees `rows` instructions (padded by repetition, then
    sliced), so it compiles for one shape.
    """

    def __init__(self, model, params, *, encode_fn, rows: int, **kwargs):
      super().__init__(model, params, **kwargs)
      self._shared_encode = encode_fn
      self._rows = max(1, int(rows))

    def encode_instruction(self, hyper_encoder_input_tokens) -> Adaptation:
      tokens = np.asarray(hyper_encoder_input_tokens)
      parts = []
      for start in range(0, len(tokens), self._rows):
        chunk = tokens[start:start + self._rows]
        n = len(chunk)
        padded = np.concatenate(
            [chunk, np.repeat(chunk[-1:], self._rows - n, axis=0)])
        out = self._shared_encode(self.params, padded)
        parts.append(jax.tree.map(lambda x, n=n: x[:n], out))
      if len(parts) == 1:
        return parts[0]
      return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)

  return EvaluatorAdaptationCache


def make_cache(model, params, *, batch_size: int = 32, encode_fn=None):
  """The shared `AdaptationCache` (adapted, see `_shared_cache_class`) when it
  exists, else `LocalAdaptationCache`.

  Args:
    model: an `EncoderDecoderModel` with a hypernetwork.
    params: its (unboxed) parameters.
    batch_size: the evaluation batch size (instructions per encoder call).
    encode_fn: jitted `(params, hyper_tokens) -> Adaptation` to share.
  """
  encode_fn = encode_fn or jax.jit(model.encode_instruction)
  # Rows of one batch must all stay resident; with rows ordered by
  # instruction an evicted instruction never recurs.
  max_entries = max(4 * batch_size, 256)
  cls = _shared_cache_class()
  if cls is not None:
    return cls(model, params, encode_fn=encode_fn, rows=batch_size,
               max_entries=max_entries)
  return LocalAdaptationCache(model, params, encode_batch_size=batch_size,
                              max_entries=max_entries, encode_fn=encode_fn)
