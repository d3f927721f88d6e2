"""pipeline: determinism, start_batch, sharding, lookups, registration."""
import numpy as np
import pytest

from hyper_tasks.data import features as F
from hyper_tasks.data import instruction_groups
from hyper_tasks.data import pipeline
from hyper_tasks.data import register
from hyper_tasks.data import registry
from hyper_tasks.data import toy

LENGTHS = {F.HYPER_INPUTS: 48, F.INPUTS: 16, F.TARGETS: 16}


def _batches(n, **kwargs):
  it = pipeline.get_dataset("toy_train", "train", LENGTHS, batch_size=8,
                            **kwargs)
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


@pytest.fixture(scope="module")
def toy_registered():
  toy.register_toy()
  yield
  registry.unregister_all()


def test_same_batches_for_a_seed(toy_registered):
  first = _batches(6, seed=3)
  _assert_same(first, _batches(6, seed=3))
  other = _batches(6, seed=4)
  assert not np.array_equal(first[0][F.ENCODER_INPUT_TOKENS],
                            other[0][F.ENCODER_INPUT_TOKENS])
  batch = first[0]
  assert set(batch) == set(F.MODEL_FEATURES)
  assert batch[F.HYPER_ENCODER_INPUT_TOKENS].shape == (8, 48)
  assert batch[F.DECODER_LOSS_WEIGHTS].dtype == np.int32


def test_start_batch_equals_skipping(toy_registered):
  full = _batches(7, seed=5)
  resumed = _batches(3, seed=5, start_batch=4)
  _assert_same(resumed, full[4:])


@pytest.mark.parametrize("group,hosts,start", [(1, 4, 2), (2, 2, 0), (2, 2, 3)])
def test_host_slices_make_the_same_global_batches(toy_registered, group, hosts,
                                                  start):
  """Topology invariance: num_shards hosts, each keeping its slice of the global
  batch, see together exactly the batches one host sees, in the same order, from
  any start_batch (a resume on another host count)."""
  def batches(num_shards, shard_id=0, start_batch=0, n=3):
    it = pipeline.get_dataset("toy_train", "train", LENGTHS,
                              batch_size=8 // num_shards, seed=7,
                              shard_id=shard_id, num_shards=num_shards,
                              start_batch=start_batch,
                              instruction_group_size=group)
    return [next(it) for _ in range(n)]
  one = batches(1, start_batch=start)
  slices = [batches(hosts, i, start) for i in range(hosts)]
  joined = [{k: np.concatenate([s[b][k] for s in slices]) for k in one[0]}
            for b in range(3)]
  _assert_same(joined, one)
  assert slices[0][0][F.ENCODER_INPUT_TOKENS].shape[0] == 8 // hosts
  assert (slices[0][0][F.HYPER_ENCODER_INPUT_TOKENS].shape[0]
          == 8 // hosts // group)


def test_host_slices_reject_bad_shards(toy_registered):
  with pytest.raises(ValueError, match="shard_id=2"):
    pipeline.get_dataset("toy_train", "train", LENGTHS, batch_size=4, shard_id=2,
                         num_shards=2)
  with pytest.raises(ValueError, match="drop_remainder"):
    pipeline.get_dataset("toy_train", "train", LENGTHS, batch_size=4, shard_id=0,
                         num_shards=2, drop_remainder=False)


def test_truncation_stats_after_a_finite_pass(toy_registered):
  lengths = {F.HYPER_INPUTS: 8, F.INPUTS: 16, F.TARGETS: 16}
  records = pipeline.load_examples("toy_test_heldout_op", "test")
  expected = sum(len(r[F.HYPER_INPUTS].encode()) + 1 > 8 for r in records)
  it = pipeline.get_dataset("toy_test_heldout_op", "test", lengths,
                            batch_size=4, shuffle=False, num_epochs=1,
                            drop_remainder=False)
  rows = sum(len(b[F.ENCODER_INPUT_TOKENS]) for b in it)
  stats = it.truncation_stats()
  assert rows == len(records) == stats["examples"]
  assert stats[F.HYPER_INPUTS] == expected > 0
  assert stats[F.INPUTS] == stats[F.TARGETS] == 0


def test_load_examples_and_lookups(toy_registered):
  assert pipeline.splits("toy_train") == ("train", "validation", "test")
  some = pipeline.load_examples("toy_train", "train", max_examples=3)
  assert len(some) == 3 and some[0][F.TASK_NAMES] == "list_max"
  assert set(some[0]) == set(F.RECORD_KEYS)
  assert "toy_train" in pipeline.list_names("toy_*")["tasks"]
  with pytest.raises(KeyError, match="No seqio task or mixture named"):
    pipeline.get_provider("toy_nonexistent")
  with pytest.raises(ValueError, match="missing"):
    pipeline.get_dataset("toy_train", "train", {F.INPUTS: 8})


def _decode(tokens):
  return bytes(int(t) - 3 for t in tokens if t > 2).decode()


def test_instruction_groups_share_one_instruction_row(toy_registered):
  by_phrasing = {p: op for op in toy.OPERATIONS for p in op.phrasings}
  lengths = {**LENGTHS, F.HYPER_INPUTS: 80}  # whole toy instructions
  it = pipeline.get_dataset("toy_train", "train", lengths, batch_size=8, seed=1,
                            instruction_group_size=4)
  ops_seen = set()
  for _ in range(5):
    batch = next(it)
    hyper = batch[F.HYPER_ENCODER_INPUT_TOKENS]
    assert hyper.shape == (2, 80)
    assert batch[F.ENCODER_INPUT_TOKENS].shape[0] == 8
    for row in range(8):
      # Example ``row`` belongs to group ``row // 4``: its target is that
      # instruction's operation applied to its input.
      op = by_phrasing[_decode(hyper[row // 4])]
      ops_seen.add(op.name)
      x = _decode(batch[F.ENCODER_INPUT_TOKENS][row])
      y = _decode(batch[F.DECODER_TARGET_TOKENS][row])
      assert op.fn(x) == y, (op.name, x, y)
  assert len(ops_seen) > 3  # groups of different instructions, still shuffled
  # Deterministic, and resumable with start_batch.
  again = pipeline.get_dataset("toy_train", "train", lengths, batch_size=8,
                               seed=1, instruction_group_size=4, start_batch=4)
  np.testing.assert_array_equal(next(again)[F.HYPER_ENCODER_INPUT_TOKENS], hyper)


def test_instruction_group_errors(toy_registered):
  with pytest.raises(ValueError, match="must be >= 1 and divide batch_size=8"):
    pipeline.get_dataset("toy_train", "train", LENGTHS, batch_size=8,
                         instruction_group_size=3)
  with pytest.raises(ValueError, match="packing"):
    pipeline.get_dataset("toy_train", "train", LENGTHS, batch_size=8, pack=True,
                         instruction_group_size=2)
  mixed = {F.HYPER_ENCODER_INPUT_TOKENS: np.array([[5, 6], [5, 6], [5, 7], [5, 6]],
                                                  np.int32)}
  out = instruction_groups.dedupe_instructions(
      {F.HYPER_ENCODER_INPUT_TOKENS: mixed[F.HYPER_ENCODER_INPUT_TOKENS][:2]}, 2)
  np.testing.assert_array_equal(out[F.HYPER_ENCODER_INPUT_TOKENS], [[5, 6]])
  with pytest.raises(Exception, match="holds different instructions"):
    instruction_groups.dedupe_instructions(mixed, 2)


def test_register_all_is_idempotent(clean_registry):
  first = register.register_all()
  assert "esni_def_train" in first and "toy_train" in first
  provider = pipeline.get_provider("toy_train")
  assert register.register_all() == first
  assert pipeline.get_provider("toy_train") is provider  # Not rebuilt.


def test_unknown_name_registers_the_embedded_default(clean_registry):
  registry.unregister_all()
  assert pipeline.get_provider("esni_def_test").name == "esni_def_test"


def test_embedded_tasks_record_their_evaluation_mode(clean_registry):
  register.register_all()
  for name in ("toy_train", "esni_def_test", "embedded_pretrain",
               "esni_def"):
    assert registry.evaluation_mode(name) == registry.GENERATION
  assert registry.evaluation_mode("not_registered") == registry.GENERATION
  with pytest.raises(ValueError, match="evaluation mode"):
    registry.add_task("toy_bad_mode", ("bad",), dict, evaluation_mode="score")
