"""Toy instruction tasks: operations, phrasings, held-out splits, formats."""
import pytest

from hyper_tasks.data import features as F
from hyper_tasks.data import pipeline
from hyper_tasks.data import sni_formats
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
  assert len(names) == 12 + 2 * 2 * 4 and "toy_concat_test_heldout_op" in names
  records = pipeline.load_examples("toy_test_heldout_op", "test")
  assert records == list(toy.records("", "test_heldout_op", "test", 4, 1))
  assert "held-out op" in toy.describe("list_last")


# -- few-shot instructions ---------------------------------------------------------

def test_few_shot_instruction_is_tk_instruct_definition_and_examples():
  inst = toy.instances("test_heldout_op", "test", num_test_per_op=3)[0]
  op = inst["op"]
  demos = toy.demonstrations(op, 2, inst["phrasing_index"], exclude=inst["input"])
  hint = toy.format_instance(inst, "", "id", shots="def_pos_2")
  concat = toy.format_instance(inst, "concat", "id", shots="def_pos_2")
  expected = (sni_formats.definition_part(inst["phrasing"])
              + sni_formats.demonstration_part(demos[0], 1, "Positive", False)
              + sni_formats.demonstration_part(demos[1], 2, "Positive", False))
  assert hint[F.HYPER_INPUTS] == expected
  assert expected.startswith(f"Definition: {inst['phrasing']}\n\n Positive Example 1"
                             f" -\nInput: {demos[0].input}.\n Output: "
                             f"{demos[0].output}.\n\n Positive Example 2 -\n")
  assert hint[F.INPUTS] == inst["input"]
  assert concat[F.INPUTS] == f"{expected} Input: {inst['input']}"
  assert concat[F.HYPER_INPUTS] == ""
  assert hint[F.TARGETS] == concat[F.TARGETS] == inst["target"]
  # Examples only, and the examples are the operation's own input/output pairs.
  only = toy.format_instance(inst, "", "id", shots="pos_2")
  assert only[F.HYPER_INPUTS] == expected[len(
      sni_formats.definition_part(inst["phrasing"])):]
  for d in demos:
    assert d.output == op.fn(d.input)
    assert len(d.input) <= 15 and d.input != inst["input"]
  # Zero-shot records are unchanged by the few-shot machinery.
  assert toy.format_instance(inst, "", "id")[F.HYPER_INPUTS] == inst["phrasing"]


def test_few_shot_examples_are_deterministic_and_never_the_instance():
  op = OPS["word_length"]
  first = toy.demonstrations(op, 4, phrasing_index=3)
  assert first == toy.demonstrations(op, 4, phrasing_index=3)
  assert first != toy.demonstrations(op, 4, phrasing_index=3, seed=1)
  assert first != toy.demonstrations(op, 4, phrasing_index=4)
  assert len({d.input for d in first}) == 4
  assert toy.demonstrations(op, 2, 3) == first[:2]
  # The evaluated instance's input is skipped; the next of the pool takes its place.
  skipped = toy.demonstrations(op, 2, 3, exclude=first[0].input)
  assert skipped == first[1:3]
  # Over whole tasks, no record's examples hold its own input; one instruction
  # serves all instances of a phrasing (one hypernetwork run each).
  for subset in toy.SUBSETS:
    recs = toy.records("", subset, "test", shots="def_pos_2")
    assert recs == toy.records("", subset, "test", shots="def_pos_2")
    for rec in recs:
      assert f"\nInput: {rec[F.INPUTS]}.\n" not in rec[F.HYPER_INPUTS], rec
    by_template = {}
    for rec in recs:
      by_template.setdefault(rec[F.TEMPLATE], set()).add(rec[F.HYPER_INPUTS])
    assert sum(len(v) for v in by_template.values()) < 1.1 * len(by_template)


def test_few_shot_bad_input_errors_name_the_task_and_k():
  inst = toy.instances("test_seen", "test", num_test_per_op=1)[0]
  with pytest.raises(ValueError,
                     match=r"'toy_def_pos_5_test_seen'.*k=5.*has 4 per instruction"):
    toy.records("", "test_seen", "test", num_test_per_op=1, shots="def_pos_5")
  with pytest.raises(ValueError, match=r"k=9 positive examples asked"):
    toy.demonstrations(OPS["list_max"], 9, 0)
  with pytest.raises(ValueError,
                     match=r"'toy_noinstr_def_pos_2_test_seen' has no instruction: "
                           r"k=2"):
    toy.records("noinstr", "test_seen", "test", num_test_per_op=1,
                shots="def_pos_2")
  with pytest.raises(ValueError, match="Unknown toy few-shot format"):
    toy.format_instance(inst, "", "id", shots="def_pos_2_neg_1")
  with pytest.raises(ValueError, match="Unknown SNI format"):
    toy.register_toy(shot_formats=("two_shots",))


def test_registered_few_shot_tasks(clean_registry):
  names = toy.register_toy(num_per_op=4, num_test_per_op=1)
  assert "toy_def_pos_2_test_heldout_op" in names
  assert "toy_concat_pos_2_train" in names
  assert not [n for n in names if n.startswith("toy_noinstr_") and "pos" in n]
  assert len(names) == 12 + 2 * 2 * 4
  records = pipeline.load_examples("toy_concat_def_pos_2_test_heldout_op", "test")
  assert records == list(toy.records("concat", "test_heldout_op", "test", 4, 1,
                                     shots="def_pos_2"))
  assert "Positive Example 2" in records[0][F.INPUTS]
