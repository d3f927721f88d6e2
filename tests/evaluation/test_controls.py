"""Tests for the instruction-rewriting robustness controls."""

import copy

import pytest

from hyper_tasks.evaluation import controls

INSTRUCTIONS = {
    "task_a": "Answer the question about the passage.",
    "task_b": "Classify the sentiment of the review as positive or negative.",
    "task_c": "Translate the sentence into French.",
    "task_d": "Write a title.",
}


def _examples():
  examples = []
  for task, instruction in INSTRUCTIONS.items():
    for i in range(3):
      examples.append({
          "hyper_inputs": instruction, "inputs": f"{task} input number {i}",
          "targets": f"{task} target {i}", "task_names": task, "id": (task, i)})
  return examples


def _instruction_by_task(examples):
  by_task = {}
  for ex in examples:
    by_task.setdefault(ex["task_names"], set()).add(ex["hyper_inputs"])
  assert all(len(v) == 1 for v in by_task.values()), by_task
  return {task: v.pop() for task, v in by_task.items()}


def _assert_only_instruction_changed(before, after):
  assert len(before) == len(after)
  for b, a in zip(before, after):
    assert {k: v for k, v in b.items() if k != "hyper_inputs"} == {
        k: v for k, v in a.items() if k != "hyper_inputs"}


@pytest.mark.parametrize("seed", range(10))
def test_shuffle_is_a_derangement_over_tasks(seed):
  examples = _examples()
  original = copy.deepcopy(examples)
  shuffled = controls.shuffle_instructions(examples, seed)
  assert examples == original  # Input not mutated.
  _assert_only_instruction_changed(examples, shuffled)
  got = _instruction_by_task(shuffled)
  for task, instruction in got.items():
    assert instruction != INSTRUCTIONS[task]
  # A permutation: every instruction is used exactly once.
  assert sorted(got.values()) == sorted(INSTRUCTIONS.values())


def test_shuffle_is_deterministic_and_order_independent():
  examples = _examples()
  a = _instruction_by_task(controls.shuffle_instructions(examples, seed=3))
  b = _instruction_by_task(controls.shuffle_instructions(examples[::-1], 3))
  assert a == b
  mappings = {tuple(sorted(_instruction_by_task(
      controls.shuffle_instructions(examples, s)).items())) for s in range(20)}
  assert len(mappings) > 1  # The seed matters.


def test_shuffle_two_tasks_swaps_them():
  examples = [e for e in _examples() if e["task_names"] in ("task_a", "task_b")]
  got = _instruction_by_task(controls.shuffle_instructions(examples, seed=0))
  assert got == {"task_a": INSTRUCTIONS["task_b"],
                 "task_b": INSTRUCTIONS["task_a"]}


def test_shuffle_cycles_through_donor_instructions_and_keeps_bytes():
  examples = [
      {"hyper_inputs": b"a1", "task_names": b"a"},
      {"hyper_inputs": b"a2", "task_names": b"a"},
      {"hyper_inputs": b"b1", "task_names": b"b"},
      {"hyper_inputs": b"b1", "task_names": b"b"},
      {"hyper_inputs": b"b1", "task_names": b"b"},
  ]
  got = [e["hyper_inputs"] for e in controls.shuffle_instructions(examples)]
  assert got == [b"b1", b"b1", b"a1", b"a2", b"a1"]


def test_shuffle_needs_two_tasks():
  examples = [e for e in _examples() if e["task_names"] == "task_a"]
  with pytest.raises(ValueError, match="at least 2 distinct tasks"):
    controls.shuffle_instructions(examples, seed=0)


def test_random_instruction_keeps_word_count_and_task_consistency():
  examples = _examples()
  words = ["alpha", "beta", "gamma", "delta"]
  out = controls.random_instruction(examples, seed=1, words=words)
  _assert_only_instruction_changed(examples, out)
  got = _instruction_by_task(out)
  for task, instruction in got.items():
    assert instruction != INSTRUCTIONS[task]
    assert len(instruction.split()) == len(INSTRUCTIONS[task].split())
    assert set(instruction.split()) <= set(words)
  assert got == _instruction_by_task(
      controls.random_instruction(examples[::-1], seed=1, words=words))
  assert got != _instruction_by_task(
      controls.random_instruction(examples, seed=2, words=words))


def test_random_instruction_pools():
  examples = _examples()
  out = controls.random_instruction(examples, seed=0,
                                    text_pool=["lorem ipsum", "dolor"])
  assert set(" ".join(_instruction_by_task(out).values()).split()) <= {
      "lorem", "ipsum", "dolor"}
  # Default pool: the words of the instance inputs.
  out = controls.random_instruction(examples, seed=0)
  input_words = {w for e in examples for w in e["inputs"].split()}
  used = " ".join(_instruction_by_task(out).values()).split()
  assert set(used) <= input_words
  with pytest.raises(ValueError, match="at most one"):
    controls.random_instruction(examples, words=["a"], text_pool=["b"])
  with pytest.raises(ValueError, match="empty word pool"):
    controls.random_instruction(examples, words=[])


def test_empty_instruction():
  examples = _examples()
  out = controls.empty_instruction(examples)
  _assert_only_instruction_changed(examples, out)
  assert all(e["hyper_inputs"] == "" for e in out)
  assert controls.empty_instruction(
      [{"hyper_inputs": b"x", "task_names": "t"}])[0]["hyper_inputs"] == b""


def test_controls_registry():
  examples = _examples()
  for name in controls.CONTROLS:
    out = controls.apply_control(name, examples, seed=0)
    _assert_only_instruction_changed(examples, out)
  with pytest.raises(ValueError, match="Unknown control"):
    controls.apply_control("nope", examples)


def test_missing_field_is_named():
  with pytest.raises(ValueError, match="example 0 has no 'hyper_inputs'"):
    controls.empty_instruction([{"task_names": "t"}])
  with pytest.raises(TypeError, match="untokenized"):
    controls.empty_instruction([{"hyper_inputs": [1, 2], "task_names": "t"}])
