"""AdaptationCache: one hypernetwork run per distinct instruction, outputs identical to
the uncached path (HINT with instruction fusion, instructions of different lengths)."""
import functools

import jax
import numpy as np
import pytest

from hyper_tasks.models import builders
from hyper_tasks.models.cache import AdaptationCache, instruction_key, stats

V, B, LI, LT, LH = 64, 4, 5, 3, 6
fast_jit = functools.partial(jax.jit, compiler_options={
    "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
# D shares A's first tokens: keys are whole rows, not prefixes.
INSTRUCTIONS = {"A": [20, 21, 22, 1], "B": [23, 1], "C": [24, 25, 26, 27, 28, 1],
                "D": [20, 21, 1]}


def hyper_rows(names):
  rows = np.zeros((len(names), LH), np.int32)
  for i, n in enumerate(names):
    rows[i, :len(INSTRUCTIONS[n])] = INSTRUCTIONS[n]
  return rows


def batch_for(names, seed):
  rng = np.random.RandomState(seed)
  tgt = rng.randint(2, V, size=(len(names), LT)).astype(np.int32)
  return {"hyper_encoder_input_tokens": hyper_rows(names),
          "encoder_input_tokens": rng.randint(2, V, size=(len(names), LI)).astype(
              np.int32),
          "decoder_input_tokens": np.concatenate(
              [np.zeros((len(names), 1), np.int32), tgt[:, :-1]], 1),
          "decoder_target_tokens": tgt}


@pytest.fixture(scope="module")
def setup():
  model = builders.make_model(
      hypernet="hint", peft_spec=builders.make_peft_spec(adapter_size=4,
                                                         num_prefix_tokens=2),
      instruction_fusion=True, vocab_size=V, dropout_rate=0.0,
      hypernet_kwargs={"num_heads": 4, "dropout_rate": 0.0},
      config_overrides=dict(num_encoder_layers=1, num_decoder_layers=1))
  shapes = {k: v.shape for k, v in batch_for("ABCD", 0).items()}
  key = jax.random.key(0, impl="rbg")
  params = fast_jit(lambda k: model.get_initial_variables(
      k, shapes, boxed=False)["params"])(key)
  return model, params, fast_jit(model.score_batch)


def test_instruction_key_ignores_trailing_padding_only():
  assert instruction_key([5, 6, 1, 0, 0]) == instruction_key([5, 6, 1])
  assert instruction_key([5, 6, 1, 0]) != instruction_key([5, 6, 0, 1])
  assert instruction_key([20, 21, 1]) != instruction_key([20, 21, 22, 1])
  assert instruction_key([0, 0]) == instruction_key([])


def test_one_run_per_distinct_instruction_and_identical_outputs(setup):
  model, params, score = setup
  cache = AdaptationCache(model, params)
  # 12 instances, 4 distinct instructions, duplicates within and across batches.
  batches = [batch_for(names, seed) for seed, names in
             enumerate(["ABAB", "CADC", "DBAC"])]
  for batch in batches:
    cached = cache.get(batch["hyper_encoder_input_tokens"])
    assert cached.batched and cached.instruction.shape == (B, LH, 32)
    np.testing.assert_allclose(np.asarray(score(params, batch, cached)),
                               np.asarray(score(params, batch)),
                               atol=1e-5, rtol=1e-5)
  assert cache.hits == 12 - 4
  assert cache.misses == cache.hypernet_runs == 4
  assert cache.hypernet_calls == 2  # the third batch ran no hypernetwork at all
  assert stats(cache)["entries"] == 4


def test_many_instances_of_one_task_run_the_hypernetwork_once(setup):
  model, params, score = setup
  cache = AdaptationCache(model, params)
  for seed in range(3):
    batch = batch_for("CCCC", 10 + seed)
    cached = cache.get(batch["hyper_encoder_input_tokens"])
    np.testing.assert_allclose(np.asarray(score(params, batch, cached)),
                               np.asarray(score(params, batch)),
                               atol=1e-5, rtol=1e-5)
  assert cache.hypernet_runs == 1 and cache.hits == 11
  # The per-task (unbatched) adaptation, broadcast by the backbone, agrees too.
  task = cache.get_task(hyper_rows("C")[0])
  assert not task.batched and task.instruction.shape == (LH, 32)
  assert cache.hypernet_runs == 1
  np.testing.assert_allclose(np.asarray(score(params, batch, task)),
                             np.asarray(score(params, batch)), atol=1e-5, rtol=1e-5)


def test_prefetch_encodes_ahead_in_one_call_with_the_same_counters(setup):
  """Prefetching the next instructions runs the hypernetwork once for all of
  them (not once per instruction padded to a batch); outputs and the hit / miss
  counters equal the cache without prefetching."""
  model, params, score = setup
  plain, ahead = AdaptationCache(model, params), AdaptationCache(model, params,
                                                                  encode_rows=B)
  assert ahead.prefetch(hyper_rows("ABCA")) == 3
  assert ahead.prefetch(hyper_rows("AB")) == 0  # Stored: nothing to run.
  assert ahead.hypernet_calls == 1 and ahead.hypernet_runs == 3
  assert ahead.holds(instruction_key(hyper_rows("C")[0]))
  assert not ahead.holds(instruction_key(hyper_rows("D")[0]))
  for seed, names in enumerate(["AABB", "CCAB"]):
    batch = batch_for(names, 20 + seed)
    rows = batch["hyper_encoder_input_tokens"]
    # Encoded in batches of other sizes: equal up to float rounding (XLA tiles a
    # 3-row and a 2-row batch differently on some CPUs), not bitwise.
    np.testing.assert_allclose(
        np.asarray(score(params, batch, ahead.get(rows))),
        np.asarray(score(params, batch, plain.get(rows))), rtol=1e-6, atol=1e-6)
  task = hyper_rows("C")[0]
  np.testing.assert_allclose(np.asarray(ahead.get_task(task).instruction),
                             np.asarray(plain.get_task(task).instruction),
                             rtol=1e-6, atol=1e-6)
  assert (ahead.hits, ahead.misses) == (plain.hits, plain.misses) == (6, 3)
  assert ahead.hypernet_calls == 1 and plain.hypernet_calls == 2


def test_least_recently_used_entries_are_evicted(setup):
  model, params, score = setup
  cache = AdaptationCache(model, params, max_entries=2)
  cache.get(hyper_rows("AB"))
  cache.get(hyper_rows("A"))       # A is now the most recent
  cache.get(hyper_rows("C"))       # evicts B
  assert len(cache) == 2 and cache.hypernet_runs == 3
  cache.get(hyper_rows("A"))
  assert cache.hypernet_runs == 3  # A survived
  cache.get(hyper_rows("B"))
  assert cache.hypernet_runs == 4  # B had been evicted
  # A call with more distinct rows than fit still returns all of them, correctly.
  batch = batch_for("ABCD", 3)
  cached = cache.get(batch["hyper_encoder_input_tokens"])
  assert len(cache) == 2
  np.testing.assert_allclose(np.asarray(score(params, batch, cached)),
                             np.asarray(score(params, batch)), atol=1e-5, rtol=1e-5)


def test_bad_uses_raise(setup):
  model, params, _ = setup
  with pytest.raises(ValueError, match=r"\[batch, length\]"):
    AdaptationCache(model, params).get(np.ones((2, 3, 4), np.int32))
  with pytest.raises(ValueError, match="max_entries"):
    AdaptationCache(model, params, max_entries=0)
  plain = builders.make_model(hypernet="none", vocab_size=V)
  with pytest.raises(ValueError, match="needs a model with a hypernetwork"):
    AdaptationCache(plain, params)


def test_bounded_in_bytes(setup):
  model, params, score = setup
  one = AdaptationCache(model, params)
  one.get(hyper_rows("A"))
  size = one.nbytes
  assert size > 0 and stats(one)["bytes"] == size
  # Room for two entries of A's size: the third evicts the least recent.
  cache = AdaptationCache(model, params, max_bytes=2 * size + size // 2)
  cache.get(hyper_rows("AB"))
  cache.get(hyper_rows("A"))
  cache.get(hyper_rows("C"))
  assert cache.nbytes <= cache.max_bytes and cache.hypernet_runs == 3
  cache.get(hyper_rows("A"))
  assert cache.hypernet_runs == 3  # A survived, B was evicted
  batch = batch_for("ABCD", 5)
  cached = cache.get(batch["hyper_encoder_input_tokens"])
  np.testing.assert_allclose(np.asarray(score(params, batch, cached)),
                             np.asarray(score(params, batch)), atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="max_bytes"):
    AdaptationCache(model, params, max_bytes=0)


def test_per_task_entry_counts_the_rows_it_serves(setup):
  model, params, _ = setup
  cache = AdaptationCache(model, params)
  first = cache.get_task(hyper_rows("B")[0], rows=4)
  cache.get_task(hyper_rows("B")[0], rows=3)
  assert not first.batched
  assert (cache.misses, cache.hits, cache.hypernet_runs) == (1, 6, 1)
