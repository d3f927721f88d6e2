"""Toy instruction tasks: operations, held-out splits, formats, registration."""
import pytest

from hyper_tasks.data import features as F
from hyper_tasks.data import pipeline
from hyper_tasks.data import toy

OPS = toy.OPERATIONS_BY_NAME


@pytest.mark.parametrize("op, x, y", [
    ("list_reverse", "3 1 4", "4 1 3"),
    ("list_sort", "3 1 4 1", "1 1 3 4"),
    ("list_first", "3 1 4", "3"),
    ("list_last", "3 1 4", "4"),
    ("list_length", "3 1 4 1 5", "5"),
    ("list_sum_mod_10", "9 8 7", "4"),
    ("list_max", "3 9 4", "9"),
    ("list_min", "3 9 4", "3"),
    ("list_dedupe", "3 1 3 4 1", "3 1 4"),
    ("word_upper", "bako", "BAKO"),
    ("word_reverse", "bako", "okab"),
    ("word_first_letter", "bako", "b"),
    ("word_last_letter", "bako", "o"),
    ("word_double", "bo", "bobo"),
    ("list_sort_desc", "3 1 4", "4 3 1"),
    ("word_first_letter_upper", "bako", "B"),
    ("word_reverse_upper", "bako", "OKAB"),
])
def test_operations(op, x, y):
  assert OPS[op].fn(x) == y


def test_instances_are_deterministic_and_targets_right():
  first = toy.instances("train", "train", num_per_op=10)
  assert first == toy.instances("train", "train", num_per_op=10)
  assert first != toy.instances("train", "train", num_per_op=10, seed=1)
  assert first != toy.instances("train", "validation", num_per_op=10)
  for inst in first:
    assert inst["target"] == inst["op"].fn(inst["input"])
    assert len(inst["input"]) <= 13 and len(inst["target"]) <= 14


def test_held_out_phrasings_and_operations_never_train():
  train = toy.instances("train", "train", num_per_op=20)
  train_phrasings = {i["phrasing"] for i in train}
  train_ops = {i["op"].name for i in train}
  heldout_phrasing = toy.instances("test_heldout_phrasing", "test",
                                   num_per_phrasing=2)
  heldout_op = toy.instances("test_heldout_op", "test", num_per_phrasing=2)
  assert not {i["phrasing"] for i in heldout_phrasing} & train_phrasings
  assert {i["op"].name for i in heldout_phrasing} == train_ops
  assert not {i["op"].name for i in heldout_op} & train_ops
  assert {i["op"].name for i in heldout_op} == {
      "list_sort_desc", "word_first_letter_upper", "word_reverse_upper"}


def test_formats_share_instances():
  hint = toy.records("", "test_seen", "test", num_per_phrasing=2)
  concat = toy.records("concat", "test_seen", "test", num_per_phrasing=2)
  noinstr = toy.records("noinstr", "test_seen", "test", num_per_phrasing=2)
  for h, c, n in zip(hint, concat, noinstr):
    assert c[F.HYPER_INPUTS] == n[F.HYPER_INPUTS] == ""
    assert c[F.INPUTS] == f"{h[F.HYPER_INPUTS]} Input: {h[F.INPUTS]}"
    assert n[F.INPUTS] == h[F.INPUTS]
    assert h[F.TARGETS] == c[F.TARGETS] == n[F.TARGETS]
  with pytest.raises(ValueError, match="Unknown toy format"):
    toy.format_instance(toy.instances("train", "test")[0], "bad", "id")
  with pytest.raises(ValueError, match="Unknown toy subset"):
    toy.instances("nope", "train")


def test_registered_toy_tasks(clean_registry):
  names = toy.register_toy(num_per_op=4, num_per_phrasing=1)
  assert len(names) == 12 and "toy_concat_test_heldout_op" in names
  records = pipeline.load_examples("toy_test_heldout_op", "test")
  assert records == list(toy.records("", "test_heldout_op", "test", 4, 1))
  assert "held-out op" in toy.describe("list_sort_desc")
