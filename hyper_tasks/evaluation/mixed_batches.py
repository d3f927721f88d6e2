"""Mixed-task batches at inference: one batch, many tasks, each its cached adaptation.

A serving stream interleaves examples of many tasks. Two ways to batch it:

* **mixed** (:func:`run_mixed`): batches in stream order; each batch's per-example
  ``Adaptation`` (``batched=True``) is gathered from the per-task
  :class:`~hyper_tasks.models.cache.AdaptationCache` (the hypernetwork runs once
  per instruction, ever), and the backbone applies a different adapter to each row;
* **task by task** (:func:`run_task_by_task`): the stream is regrouped by
  instruction and each group runs in its own batches with the task's single
  per-task ``Adaptation`` (``batched=False``, broadcast over the batch: shared
  matmuls), then the outputs are put back in stream order.

Both give the same outputs: greedy tokens identical; scores equal up to float
reduction order (a per-example ``[B, din, dout]`` einsum sums in another order
than the shared ``[din, dout]`` matmul: differences of ~1e-5 nats were measured,
often 0). ``run_task_by_task(..., broadcast=False)`` runs the groups with the
per-example form of the same adaptation, i.e. the very computation of the mixed
batches, and then matches them bitwise (``tests/evaluation/test_mixed_batches.py``); :func:`benchmark` measures examples/s of both
(``benchmarks/mixed_batches.py``). Mixed batching needs no regrouping and no wait
for a task's batch to fill; task by task uses shared weights and full batches of
one task but pads the last batch of every task.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from hyper_tasks.data import features as F
from hyper_tasks.evaluation import batching
from hyper_tasks.evaluation import runner
from hyper_tasks.models.cache import AdaptationCache, instruction_key

# The features a scoring / decoding call reads (besides the adaptation).
MODEL_KEYS = runner.SCORE_KEYS


def _fn(model, method: str, max_decode_length: Optional[int]):
  if method == "score":
    return runner.score_fn(model)
  if method == "greedy":
    return runner.predict_fn(model, "greedy", 1, max_decode_length)
  raise ValueError(f"method {method!r}: use 'score' or 'greedy'.")


def _check(arrays: Mapping[str, np.ndarray], cache: AdaptationCache):
  if F.HYPER_ENCODER_INPUT_TOKENS not in arrays:
    raise ValueError("mixed-task batching needs hyper_encoder_input_tokens (each "
                     "example's instruction).")
  if not isinstance(cache, AdaptationCache):
    raise TypeError(f"cache must be an AdaptationCache, got {type(cache).__name__}.")


def _run_batch(fn, params, arrays, indices, adaptation):
  batch = {k: jnp.asarray(arrays[k][indices]) for k in MODEL_KEYS if k in arrays}
  return fn(params, batch, adaptation)


def run_mixed(model, params, arrays: Mapping[str, np.ndarray],
              cache: AdaptationCache, batch_size: int, method: str = "score",
              max_decode_length: Optional[int] = None) -> np.ndarray:
  """Outputs (``[N]`` scores or ``[N, L]`` greedy tokens) of the stream ``arrays``
  in stream order, batched as it comes (tasks mixed within a batch)."""
  _check(arrays, cache)
  fn = _fn(model, method, max_decode_length)
  return runner.run_in_stream_order(
      lambda batch, adaptation: fn(params, batch, adaptation), arrays,
      MODEL_KEYS, cache, batch_size)


def run_task_by_task(model, params, arrays: Mapping[str, np.ndarray],
                     cache: AdaptationCache, batch_size: int, method: str = "score",
                     max_decode_length: Optional[int] = None,
                     broadcast: bool = True) -> np.ndarray:
  """Same outputs as :func:`run_mixed`, computed per instruction group with the
  task's per-task adaptation (broadcast, shared matmuls; ``broadcast=False``: the
  per-example form, as in mixed batches), returned in stream order."""
  _check(arrays, cache)
  fn = _fn(model, method, max_decode_length)
  hyper = np.asarray(arrays[F.HYPER_ENCODER_INPUT_TOKENS])
  groups: dict[bytes, list[int]] = {}
  for i, row in enumerate(hyper):
    groups.setdefault(instruction_key(row), []).append(i)
  result: Optional[np.ndarray] = None
  for rows in groups.values():
    adaptation = cache.get_task(hyper[rows[0]])  # per task, broadcast
    if not broadcast:
      adaptation = cache.get(hyper[[rows[0]] * batch_size])
    for b in batching.make_batches(np.asarray(rows), batch_size):
      out = np.asarray(_run_batch(fn, params, arrays, b.indices, adaptation))
      if result is None:
        result = np.zeros((len(hyper),) + out.shape[1:], out.dtype)
      result[b.real_indices] = out[:b.num_real]
  assert result is not None
  return result


def interleave(records: Sequence[Mapping[str, Any]], seed: int = 0
               ) -> list[Mapping[str, Any]]:
  """The records in a random order (a stream with tasks mixed)."""
  order = np.random.default_rng(seed).permutation(len(records))
  return [records[i] for i in order]


def benchmark(model, params, arrays: Mapping[str, np.ndarray], batch_size: int,
              method: str = "score", max_decode_length: Optional[int] = None,
              repeats: int = 3) -> dict[str, Any]:
  """Examples/s of mixed and task-by-task batching of the stream ``arrays``.

  Both run once to compile and fill the adaptation cache (its hypernetwork cost is
  not timed: both paths share it), then ``repeats`` timed passes each (best
  pass reported). Also compares the outputs (``outputs_equal``: greedy tokens
  identical, scores within 1e-5; ``max_abs_diff``).
  """
  cache = AdaptationCache(model, params)
  n = len(arrays[F.HYPER_ENCODER_INPUT_TOKENS])
  mixed = run_mixed(model, params, arrays, cache, batch_size, method,
                    max_decode_length)
  grouped = run_task_by_task(model, params, arrays, cache, batch_size, method,
                             max_decode_length)

  def best(fn):
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      fn(model, params, arrays, cache, batch_size, method, max_decode_length)
      times.append(time.perf_counter() - t)
    return min(times)

  t_mixed, t_grouped = best(run_mixed), best(run_task_by_task)
  num_tasks = len({instruction_key(r)
                   for r in np.asarray(arrays[F.HYPER_ENCODER_INPUT_TOKENS])})
  equal = (np.array_equal(mixed, grouped) if method == "greedy"
           else bool(np.allclose(mixed, grouped, rtol=1e-5, atol=1e-5)))
  return {
      "method": method, "examples": n, "instructions": num_tasks,
      "batch_size": batch_size,
      "mixed_examples_per_s": n / t_mixed,
      "task_by_task_examples_per_s": n / t_grouped,
      "outputs_equal": bool(equal),
      "max_abs_diff": float(np.max(np.abs(mixed.astype(np.float64)
                                          - grouped.astype(np.float64)))),
  }
