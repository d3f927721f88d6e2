"""Tests for the SNI generation metrics against direct rouge-score calls."""

import string

import pytest
from rouge_score import rouge_scorer

from hyper_tasks.evaluation import metrics

# (prediction, references): multiple references, empty predictions and
# references, punctuation-only strings, articles, stemming, case, non-English.
PAIRS = [
    ("The cat sat on the mat.", ["the cat sat on the mat"]),
    ("a cat is sitting", ["The cat sat.", "A cat is sitting!", "dog"]),
    ("", ["something"]),
    ("", [""]),
    ("", ["..."]),
    ("!!!", ["?"]),
    ("?!", ["an answer"]),
    ("running dogs", ["the dog runs", "dogs ran"]),
    ("Yes", ["yes", "no"]),
    ("an apple", ["apple"]),
    ("  multiple   spaces\tand\nlines ", ["multiple spaces and lines"]),
    ("¿Dónde está?", ["dónde está"]),
    ("positive", ["negative"]),
]


def _reference_normalize(s):
  # Written independently of the implementation: SQuAD's recipe minus articles.
  s = s.lower()
  s = "".join(ch for ch in s if ch not in set(string.punctuation))
  return " ".join(s.split())


def _reference_scores(prediction, references):
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  em = max(float(_reference_normalize(prediction) == _reference_normalize(r))
           for r in references)
  rl = max(scorer.score(r, prediction)["rougeL"].fmeasure for r in references)
  return em, rl


def test_normalize_answer_keeps_articles():
  assert metrics.normalize_answer("  The, Cat!  a\tDog. ") == "the cat a dog"
  assert metrics.normalize_answer("...") == ""
  assert metrics.normalize_answer("An apple") == "an apple"


@pytest.mark.parametrize("prediction,references", PAIRS)
def test_per_example_metrics_match_direct_computation(prediction, references):
  em, rl = _reference_scores(prediction, references)
  assert metrics.exact_match(prediction, references) == em
  assert metrics.rouge_l(prediction, references) == pytest.approx(rl, abs=1e-12)


def test_known_values():
  # Articles are kept: "an apple" != "apple".
  assert metrics.exact_match("an apple", ["apple"]) == 0.0
  # Empty vs empty matches exactly but has no tokens for ROUGE.
  assert metrics.exact_match("", [""]) == 1.0
  assert metrics.rouge_l("", [""]) == 0.0
  assert metrics.exact_match("!!!", ["?"]) == 1.0
  assert metrics.rouge_l("!!!", ["?"]) == 0.0
  # Max over references.
  assert metrics.exact_match("no", ["yes", "No."]) == 1.0
  assert metrics.rouge_l("the cat", ["dog", "the cat"]) == 1.0
  # Stemming: "dogs run" vs "dog running".
  assert metrics.rouge_l("dogs run", ["dog running"]) == 1.0
  # Non-English characters are dropped by the default tokenizer.
  assert metrics.rouge_l("est", ["está"]) == 1.0


def test_compute_generation_metrics_matches_direct_computation():
  predictions = [p for p, _ in PAIRS]
  references = [r for _, r in PAIRS]
  tasks = [f"task{i % 3}" for i in range(len(PAIRS))]
  categories = ["Question Answering" if i % 2 else "Sentiment  analysis"
                for i in range(len(PAIRS))]
  result = metrics.compute_generation_metrics(predictions, references, tasks,
                                              categories)
  scores = [_reference_scores(p, r) for p, r in PAIRS]

  def expected(indices):
    return {
        "exact_match": 100 * sum(scores[i][0] for i in indices) / len(indices),
        "rougeL": 100 * sum(scores[i][1] for i in indices) / len(indices),
        "num_examples": len(indices),
    }

  def check(got, want):
    assert got["num_examples"] == want["num_examples"]
    assert got["exact_match"] == pytest.approx(want["exact_match"])
    assert got["rougeL"] == pytest.approx(want["rougeL"])

  check(result["overall"], expected(range(len(PAIRS))))
  assert sorted(result["per_task"]) == ["task0", "task1", "task2"]
  for t in range(3):
    check(result["per_task"][f"task{t}"],
          expected([i for i in range(len(PAIRS)) if i % 3 == t]))
  # Category keys follow the official "_".join(lower().split()).
  assert sorted(result["per_category"]) == ["question_answering",
                                            "sentiment_analysis"]
  check(result["per_category"]["question_answering"],
        expected([i for i in range(len(PAIRS)) if i % 2]))


def test_compute_generation_metrics_without_groups_and_bytes():
  result = metrics.compute_generation_metrics([b"yes", "no"], [[b"Yes"], ["x"]])
  assert result["overall"]["exact_match"] == 50.0
  assert result["overall"]["rougeL"] == 50.0
  assert result["per_task"] == {} and result["per_category"] == {}


def test_errors_name_the_example():
  with pytest.raises(ValueError, match="example 1: has no references"):
    metrics.compute_generation_metrics(["a", "b"], [["a"], []])
  with pytest.raises(ValueError, match="references_lists has 1 entries"):
    metrics.compute_generation_metrics(["a", "b"], [["a"]])
  with pytest.raises(ValueError, match="task_names has 3 entries"):
    metrics.compute_generation_metrics(["a"], [["a"]], task_names=["t"] * 3)
  with pytest.raises(ValueError, match="at least one example"):
    metrics.compute_generation_metrics([], [])
  with pytest.raises(TypeError, match="example 0: references must be"):
    metrics.compute_generation_metrics(["a"], ["a"])
  with pytest.raises(ValueError, match="no references"):
    metrics.exact_match("a", [])


def test_custom_tokenizer_is_used():

  class CharTokenizer:

    def tokenize(self, text):
      return [c for c in text if not c.isspace()]

  # The default tokenizer drops non-ASCII letters; a character tokenizer
  # (stand-in for the cross-lingual GPT-2 tokenizer) does not.
  assert metrics.rouge_l("日本", ["日本語"]) == 0.0
  got = metrics.rouge_l("日本", ["日本語"], tokenizer=CharTokenizer())
  assert got == pytest.approx(2 * (1.0 * 2 / 3) / (1.0 + 2 / 3))


def test_bpe_rouge_tokenizer_strips_word_markers():

  class FakeHf:

    def tokenize(self, text):
      return ["hello", "Ġworld"]

  assert metrics.BpeRougeTokenizer(FakeHf()).tokenize("x") == ["hello", "world"]
