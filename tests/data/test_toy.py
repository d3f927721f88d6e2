"""Toy instruction tasks: operations, phrasings, held-out splits, formats."""
import pytest

from hyper_tasks.data import features as F
from hyper_tasks.data import pipeline
from hyper_tasks.data import toy

OPS = toy.OPERATIONS_BY_NAME


@pytest.mark.parametrize("op, x, y", [
    ("list_max", "3 9 4", "9"),
    ("list_min", "3 9 4", "3"),
    ("list_first", "3 1 4", "3"),
    ("list_length", "3 1 4 1 5", "5"),
    ("list_sort", "3 1 4 1", "1 1 3 4"),
    ("word_first_letter", "bako", "b"),
    ("word_last_letter", "bako", "o"),
    ("word_count_vowels", "abako", "3"),
    ("word_first_letter_upper", "bako", "B"),
    ("list_last", "3 1 4", "4"),
    ("word_length", "bako", "4"),
])
def test_operations(op, x, y):
  assert OPS[op].fn(x) == y


def test_every_operation_is_tested_and_phrasings_are_framed_cores():
  assert len(OPS) == 11
  op = OPS["list_max"]
  assert len(op.seen_phrasings) == len(op.cores) * len(toy.SEEN_FRAMES) == 50
  assert "Please find the maximum of the list." in op.seen_phrasings
  assert "Now return the maximum digit." in op.heldout_phrasings
  assert "Return the maximum digit." in op.heldout_phrasings  # seen frame
  assert op.phrasings == op.seen_phrasings + op.heldout_phrasings
  assert OPS["list_last"].seen_phrasings == ()


def test_instances_are_deterministic_and_targets_right():
  first = toy.instances("train", "train", num_per_op=10)
  assert first == toy.instances("train", "train", num_per_op=10)
  assert first != toy.instances("train", "train", num_per_op=10, seed=1)
  assert first != toy.instances("train", "validation", num_per_op=10)
  for inst in first:
    assert inst["target"] == inst["op"].fn(inst["input"])
    assert inst["phrasing"] == inst["op"].phrasings[inst["phrasing_index"]]
    assert len(inst["input"]) <= 15 and len(inst["target"]) <= 15


def test_every_seen_phrasing_trains():
  train = toy.instances("train", "train")
  for op in toy.OPERATIONS:
    used = {i["phrasing"] for i in train if i["op"] is op}
    assert used == set(op.seen_phrasings), op.name


def test_held_out_phrasings_and_operations_never_train():
  train = toy.instances("train", "train", num_per_op=60)
  train_phrasings = {i["phrasing"] for i in train}
  train_ops = {i["op"].name for i in train}
  train_words = {w.strip(".,:").lower() for p in train_phrasings for w in p.split()}
  heldout_phrasing = toy.instances("test_heldout_phrasing", "test")
  heldout_op = toy.instances("test_heldout_op", "test")
  assert not {i["phrasing"] for i in heldout_phrasing} & train_phrasings
  assert {i["op"].name for i in heldout_phrasing} == train_ops
  assert not {i["op"].name for i in heldout_op} & train_ops
  assert {i["op"].name for i in heldout_op} == {"list_last", "word_length"}
  # Held-out cores are new sentences, but each shares a content word with its
  # operation's seen cores (what a hypernetwork can generalise from).
  for op in toy.OPERATIONS:
    if op.heldout:
      continue
    seen_words = {w for c in op.cores for w in c.split()}
    for core in op.heldout_cores:
      assert core not in op.cores
      content = set(core.split()) - {"return", "tell", "me", "the", "which", "is",
                                     "at", "there", "are", "how", "many", "in",
                                     "a", "an", "as", "of"}
      assert content & seen_words, (op.name, core)
  assert {"now", "instruction", "must"}.isdisjoint(train_words)


def test_formats_share_instances():
  hint = toy.records("", "test_seen", "test", num_test_per_op=2)
  concat = toy.records("concat", "test_seen", "test", num_test_per_op=2)
  noinstr = toy.records("noinstr", "test_seen", "test", num_test_per_op=2)
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
  names = toy.register_toy(num_per_op=4, num_test_per_op=1)
  assert len(names) == 12 and "toy_concat_test_heldout_op" in names
  records = pipeline.load_examples("toy_test_heldout_op", "test")
  assert records == list(toy.records("", "test_heldout_op", "test", 4, 1))
  assert "held-out op" in toy.describe("list_last")
