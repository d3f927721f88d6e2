"""Runs a model over fixed-size batches: the jitted functions and the runner.

The jitted functions (`score_fn`, `predict_fn`, `encode_fn`) come from the one
compile cache, `hyper_tasks.models.jit_cache`, keyed by the model and their
static settings, so repeated evaluations (e.g. during training) and the
mixed-batch and diagnostics code compile each once per shape.

`Runner` scores or decodes tokenized rows (`batching.EncodedRows`) in batches of
exactly `batch_size` rows, rows of one instruction adjacent
(`batching.instruction_order`). With the adaptation cache
(`models.cache.AdaptationCache`) the hypernetwork runs once per distinct
instruction: a batch of one instruction runs with that task's per-task
(unbatched) adaptation, broadcast by the backbone; a batch that straddles
instructions with per-example adaptations. Without it (`use_cache=False`) the
model runs its hypernetwork inside every call, once per row. New instructions
are encoded ahead, up to `batch_size` distinct ones per hypernetwork call in the
order the batches need them (`AdaptationCache.prefetch`), not one instruction
padded to a whole batch.

With a mesh (`EvalOptions.mesh`) every batch is split over its data axis and the
outputs gathered on every process (sharding.py); without one, the arrays go to
the default device as before.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from hyper_tasks import tree_utils
from hyper_tasks.data import features as F
from hyper_tasks.evaluation import batching
from hyper_tasks.evaluation import sharding
from hyper_tasks.models import jit_cache
from hyper_tasks.models.cache import AdaptationCache, instruction_key

DECODE_METHODS = ("greedy", "beam")
SCORE_KEYS = (F.ENCODER_INPUT_TOKENS, F.DECODER_INPUT_TOKENS,
              F.DECODER_TARGET_TOKENS, F.DECODER_LOSS_WEIGHTS)


def score_fn(model):
  """Jitted `model.score_batch(params, batch, adaptation)`."""
  return jit_cache.method(model, "score_batch")


def predict_fn(model, method: str, num_beams: int, max_decode_length: int):
  """Jitted `model.predict_batch(params, batch, adaptation)` for one setting."""
  return jit_cache.method(
      model, "predict_batch", method=method,
      num_beams=num_beams if method == "beam" else 1,
      max_decode_length=max_decode_length)


def encode_fn(model):
  """Jitted `model.encode_instruction(params, hyper_tokens)` (uncached)."""
  return jit_cache.method(model, "encode_instruction")


def _pad_adaptation(adaptation, batch_size: int):
  """Per-example adaptation `[n, ...]` -> `[batch_size, ...]` (repeat last)."""
  def pad(x):
    n = x.shape[0]
    if n == batch_size:
      return x
    return jnp.concatenate(
        [x, jnp.repeat(x[-1:], batch_size - n, axis=0)], axis=0)
  return jax.tree.map(pad, adaptation)


def run_in_stream_order(call, arrays: Mapping[str, np.ndarray],
                        keys: Sequence[str], cache: AdaptationCache,
                        batch_size: int):
  """`call(batch, adaptation)` over the rows of `arrays` in their order, in
  batches of `batch_size` rows (tasks mixed within a batch), each row with its
  own (per-example) adaptation from `cache`.

  Args:
    call: `(batch dict of `keys`, batched Adaptation) -> array or tuple of
      arrays`, each with a leading batch axis.
    arrays: model features `[N, ...]`, `hyper_encoder_input_tokens` included.
    keys: the features `call` reads (those absent from `arrays` are skipped).
    cache: the adaptation cache.
    batch_size: rows per call (the last batch is padded, its padding dropped).

  Returns:
    `call`'s outputs for the N rows, concatenated (same structure).
  """
  hyper = np.asarray(arrays[F.HYPER_ENCODER_INPUT_TOKENS])
  outs = []
  for b in batching.make_batches(np.arange(len(hyper)), batch_size):
    batch = {k: jnp.asarray(arrays[k][b.indices]) for k in keys if k in arrays}
    out = call(batch, cache.get(hyper[b.indices]))
    outs.append(jax.tree.map(lambda x, n=b.num_real: np.asarray(x)[:n], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


class Runner:
  """Runs the model over fixed-size batches; owns the adaptation cache."""

  def __init__(self, model, params, batch_size: int, use_cache: bool,
               mesh=None):
    sharding.check_mesh(mesh, batch_size)
    self.model = model
    self.params = nn.unbox(params)
    self.batch_size = batch_size
    self.mesh = mesh
    self._ahead: tuple[np.ndarray, dict[bytes, int]] = (np.zeros((0, 0)), {})
    self.uses_instruction = bool(model.uses_instruction)
    self.cache = None
    if self.uses_instruction and use_cache:
      # Rows are ordered by instruction, so an evicted one never recurs.
      self.cache = AdaptationCache(model, self.params, encode_rows=batch_size)
    self.uncached_hypernet_rows = 0

  @property
  def hypernet_calls(self) -> int:
    if self.cache is not None:
      return int(self.cache.hypernet_runs)
    return self.uncached_hypernet_rows

  @property
  def cache_hits(self) -> int:
    return int(self.cache.hits) if self.cache is not None else 0

  def _place(self, feed: Mapping[str, np.ndarray]):
    if self.mesh is None:
      return feed
    return sharding.place_batch(feed, self.mesh)

  def _encode_ahead(self, rows: np.ndarray):
    """Encodes, with the next instructions the batches will need, those of
    ``rows`` the cache does not hold: one hypernetwork call of up to
    ``batch_size`` distinct new instructions."""
    upcoming, position = self._ahead
    missing = [instruction_key(r) for r in rows]
    missing = [k for k in missing if not self.cache.holds(k)]
    if not missing or missing[0] not in position:
      return
    start = position[missing[0]]
    self.cache.prefetch(upcoming[start:start + self.batch_size])

  def _inputs(self, arrays: Mapping[str, np.ndarray], batch: batching.Batch,
              keys: Sequence[str]):
    """(batch dict, adaptation) for one batch."""
    feed = self._place(batching.gather(arrays, batch.indices, keys))
    if not self.uses_instruction:
      return feed, None
    hyper = arrays[F.HYPER_ENCODER_INPUT_TOKENS]
    if self.cache is None:
      # The model runs the hypernetwork on every row inside the call.
      feed.update(self._place(
          {F.HYPER_ENCODER_INPUT_TOKENS: hyper[batch.indices]}))
      self.uncached_hypernet_rows += batch.num_real
      return feed, None
    self._encode_ahead(hyper[batch.real_indices])
    if batch.homogeneous:  # One per-task adaptation, broadcast.
      return feed, self.cache.get_task(hyper[batch.indices[0]],
                                       rows=batch.num_real)
    adaptation = self.cache.get(hyper[batch.real_indices])
    return feed, _pad_adaptation(adaptation, self.batch_size)

  def _batches(self, encoded: batching.EncodedRows) -> list[batching.Batch]:
    order = np.arange(len(encoded))
    hyper = None
    if self.uses_instruction:
      hyper = encoded.arrays[F.HYPER_ENCODER_INPUT_TOKENS]
      order = batching.instruction_order(hyper)
      # The distinct instructions in the order the batches first need them.
      first: dict[bytes, int] = {}
      for i in order:
        first.setdefault(instruction_key(hyper[i]), int(i))
      self._ahead = (hyper[np.asarray(list(first.values()), dtype=np.int64)],
                     {k: j for j, k in enumerate(first)})
    return batching.make_batches(order, self.batch_size, hyper)

  def score(self, encoded: batching.EncodedRows, *, progress: bool,
            desc: str) -> np.ndarray:
    """`[N]` summed target log-likelihood of every row."""
    fn = score_fn(self.model)
    scores = np.zeros(len(encoded), dtype=np.float64)
    for batch in tqdm.tqdm(self._batches(encoded), desc=desc, unit="batch",
                           disable=not progress, leave=False):
      feed, adaptation = self._inputs(encoded.arrays, batch, SCORE_KEYS)
      out = tree_utils.to_host(fn(self.params, feed, adaptation))
      scores[batch.real_indices] = out[:batch.num_real]
    return scores

  def generate(self, encoded: batching.EncodedRows, *, method: str,
               num_beams: int, max_decode_length: int, progress: bool,
               desc: str) -> np.ndarray:
    """`[N, max_decode_length]` decoded token ids of every row."""
    fn = predict_fn(self.model, method, num_beams, max_decode_length)
    out = np.zeros((len(encoded), max_decode_length), dtype=np.int32)
    for batch in tqdm.tqdm(self._batches(encoded), desc=desc, unit="batch",
                           disable=not progress, leave=False):
      feed, adaptation = self._inputs(encoded.arrays, batch,
                                      (F.ENCODER_INPUT_TOKENS,))
      tokens = tree_utils.to_host(fn(self.params, feed, adaptation))
      out[batch.real_indices] = tokens[:batch.num_real]
    return out
