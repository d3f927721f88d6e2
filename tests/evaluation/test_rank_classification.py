"""Tests for T0 rank classification: rules, ties, aggregation, errors."""

import pytest

from hyper_tasks.evaluation import rank_classification as rc


def _rows(example_id, scores, correct, task="copa", template="t1",
          tokens=None, texts=None):
  tokens = tokens or [1] * len(scores)
  texts = texts or ["x"] * len(scores)
  return [{
      "example_id": example_id, "task": task, "template": template,
      "choice_index": i, "is_correct": i == correct, "score": s,
      "num_target_tokens": n, "target_text": t,
  } for i, (s, n, t) in enumerate(zip(scores, tokens, texts))]


def test_sum_rule_picks_highest_summed_log_likelihood():
  rows = _rows(0, [-5.0, -1.0, -3.0], correct=1)
  [pred] = rc.predict_choices(rows)
  assert pred["predictions"]["sum"] == 1
  assert pred["correct"]["sum"] is True


def test_row_order_does_not_matter():
  rows = _rows(0, [-5.0, -1.0, -3.0], correct=1)
  [pred] = rc.predict_choices(rows[::-1])
  assert pred["predictions"]["sum"] == 1


def test_length_normalised_rules_differ_where_they_should():
  # Choice 0: short ("no", 1 token): -2.0 total, -2.0/token, -1.0/char.
  # Choice 1: long ("yes it is", 4 tokens): -4.0 total, -1.0/token, -4/9/char.
  # Choice 2: "maybe" (4 tokens, 5 chars): -3.2 total, -0.8/token, -0.64/char.
  rows = _rows(0, [-2.0, -4.0, -3.2], correct=1, tokens=[1, 4, 4],
               texts=["no", "yes it is", "maybe"])
  [pred] = rc.predict_choices(rows)
  assert pred["predictions"] == {"sum": 0, "per_token": 2, "per_char": 1}
  assert pred["correct"] == {"sum": False, "per_token": False, "per_char": True}


def test_per_char_uses_characters_not_bytes():
  # "été" is 3 characters but 5 utf-8 bytes. -3.3 / 3 = -1.1 < -2.0 / 2, so
  # choice 0 wins per character; counting bytes (-3.3 / 5) would pick choice 1.
  rows = _rows(0, [-2.0, -3.3], correct=1, texts=["ab", "été".encode()])
  assert rc.predict_choices(rows)[0]["predictions"]["per_char"] == 0
  rows = _rows(0, [-2.0, -2.7], correct=1, texts=["ab", "été".encode()])
  assert rc.predict_choices(rows)[0]["predictions"]["per_char"] == 1


def test_ties_go_to_lowest_choice_index():
  rows = _rows(0, [-3.0, -1.0, -1.0], correct=2)
  [pred] = rc.predict_choices(rows[::-1])
  assert pred["predictions"]["sum"] == 1
  assert pred["correct"]["sum"] is False


def test_aggregation_by_hand():
  rows = []
  # copa/t1: examples 0 (right), 1 (wrong)       -> 50
  rows += _rows(0, [-1.0, -2.0], 0, "copa", "t1")
  rows += _rows(1, [-1.0, -2.0], 1, "copa", "t1")
  # copa/t2: examples 0, 1 both right             -> 100
  rows += _rows(0, [-1.0, -2.0], 0, "copa", "t2")
  rows += _rows(1, [-3.0, -2.0], 1, "copa", "t2")
  # copa/t3: 4 examples, 1 right                  -> 25
  for i in range(4):
    rows += _rows(i, [-1.0, -2.0], 0 if i == 0 else 1, "copa", "t3")
  # wsc/a: 1 example wrong                        -> 0
  rows += _rows(7, [-1.0, -2.0, -3.0], 2, "wsc", "a")
  result = rc.evaluate_rank_classification(rows)

  per_template = result["per_template"]
  assert per_template["copa"]["t1"]["accuracy"] == 50.0
  assert per_template["copa"]["t2"]["accuracy"] == 100.0
  assert per_template["copa"]["t3"]["accuracy"] == 25.0
  assert per_template["copa"]["t3"]["num_examples"] == 4
  assert per_template["wsc"]["a"]["accuracy"] == 0.0

  copa = result["per_task"]["copa"]["accuracy"]
  assert copa == {"mean": pytest.approx(175 / 3), "median": 50.0,
                  "min": 25.0, "max": 100.0}
  assert result["per_task"]["copa"]["num_templates"] == 3
  assert result["per_task"]["copa"]["num_examples"] == 8
  assert result["per_task"]["wsc"]["accuracy"] == {
      "mean": 0.0, "median": 0.0, "min": 0.0, "max": 0.0}

  overall = result["overall"]
  assert overall["accuracy"]["mean"] == pytest.approx((175 / 3 + 0) / 2)
  assert overall["accuracy"]["median"] == 25.0
  assert overall["accuracy"]["min"] == 12.5
  assert overall["accuracy"]["max"] == 50.0
  assert (overall["num_tasks"], overall["num_templates"],
          overall["num_examples"]) == (2, 4, 9)
  # With 1-token 1-char targets every rule agrees here.
  assert overall["accuracy_per_token"] == overall["accuracy"]
  assert overall["accuracy_per_char"] == overall["accuracy"]


def test_median_of_even_number_of_templates():
  rows = _rows(0, [-1.0, -2.0], 0, "t", "a") + _rows(0, [-1.0, -2.0], 1, "t",
                                                       "b")
  result = rc.evaluate_rank_classification(rows, rules=("sum",))
  assert result["per_task"]["t"]["accuracy"]["median"] == 50.0
  assert set(result["overall"]) == {"accuracy", "num_tasks", "num_templates",
                                    "num_examples"}


def test_multiple_correct_choices_allowed():
  rows = _rows(0, [-1.0, -2.0], 0)
  rows[1]["is_correct"] = True
  assert rc.predict_choices(rows)[0]["correct"]["sum"] is True


@pytest.mark.parametrize("mutate,message", [
    (lambda rows: [dict(r, is_correct=False) for r in rows],
     "no correct choice"),
    (lambda rows: rows + [dict(rows[0])], r"duplicate choice indices \[0\]"),
    (lambda rows: rows[1:], "expected 0..1 without gaps"),
    (lambda rows: [dict(r, score=float("nan")) for r in rows], "NaN score"),
    (lambda rows: [dict(r, num_target_tokens=0) for r in rows],
     "num_target_tokens"),
    (lambda rows: [dict(r, target_text="") for r in rows], "empty target_text"),
])
def test_invalid_examples_name_the_example_id(mutate, message):
  rows = _rows("ex-42", [-1.0, -2.0, -3.0], 0)
  with pytest.raises(ValueError, match=message) as info:
    rc.evaluate_rank_classification(mutate(rows))
  assert "'ex-42'" in str(info.value)


def test_example_with_no_choices():
  rows = _rows(0, [-1.0, -2.0], 0)
  with pytest.raises(ValueError, match="example_id=1 .* has no choices"):
    rc.group_rows(rows, expected_examples=[("copa", "t1", 0),
                                           ("copa", "t1", 1)])


def test_other_errors():
  with pytest.raises(ValueError, match="lacks fields"):
    rc.group_rows([{"example_id": 0}])
  with pytest.raises(ValueError, match="no rows"):
    rc.evaluate_rank_classification([])
  with pytest.raises(ValueError, match="rules must be"):
    rc.evaluate_rank_classification(_rows(0, [-1.0], 0), rules=("mean",))
