"""Generation metrics following the Super-NaturalInstructions official protocol.

This module reproduces `eval/automatic/evaluation.py` of the allenai
natural-instructions repository, so that numbers reported by this codebase are
comparable with the SNI / Tk-Instruct / HINT papers:

- Exact match compares `normalize_answer(prediction)` with
  `normalize_answer(reference)`: lowercase, drop ASCII punctuation
  (`string.punctuation`), collapse whitespace. Unlike SQuAD, articles are KEPT.
- ROUGE-L is the F-measure of `rouge_score.rouge_scorer.RougeScorer(['rougeL'],
  use_stemmer=True)` on the RAW strings (no `normalize_answer`): the library's
  default tokenizer already lowercases and splits on non-alphanumerics.
- Both are the maximum over an example's references, averaged over examples and
  multiplied by 100. Per-task and per-category numbers are the same average
  restricted to the group (not an average of averages).

Consequences of following the official code that can surprise:

- The default rouge tokenizer keeps only `[a-z0-9]` runs, so non-English text
  (and punctuation-only strings) tokenize to nothing and score 0 ROUGE-L. The
  official code uses it for the default (English) track and switches to a GPT-2
  byte-level BPE tokenizer (no stemming, leading `Ġ` stripped) for the
  cross-lingual track. We follow the default track; pass `tokenizer=` (any
  object with `.tokenize(text) -> list[str]`, e.g. `BpeRougeTokenizer`) for the
  other.
- An empty prediction scores EM 1 against an empty (or punctuation-only)
  reference but ROUGE-L 0, because rouge-score defines F = 0 when either side
  has no tokens.
- The official script converts a category such as "Question Answering" into
  "question_answering"; `category_key` does the same so that per-category keys
  match theirs (and make clean TensorBoard tags).
- The official script rounds to 4 decimals for printing; we return unrounded
  floats and leave rounding to whoever displays them.
"""

from __future__ import annotations

import collections
import string
from typing import Any, Iterable, Optional, Protocol, Sequence

from rouge_score import rouge_scorer

_PUNCTUATION = frozenset(string.punctuation)


class RougeTokenizer(Protocol):
  """What `rouge_score.rouge_scorer.RougeScorer(tokenizer=...)` expects."""

  def tokenize(self, text: str) -> list[str]:
    ...


class BpeRougeTokenizer:
  """Adapts a Hugging Face byte-level BPE tokenizer for the cross-lingual track.

  The official SNI script tokenizes cross-lingual outputs with GPT-2's tokenizer
  and strips the `Ġ` word-boundary marker that byte-level BPE attaches to every
  word but the first, so that "a b" and "b a" share the token "b". We do not
  download GPT-2 here (no I/O at import time); pass in a tokenizer you loaded.
  """

  def __init__(self, hf_tokenizer: Any):
    self._hf_tokenizer = hf_tokenizer

  def tokenize(self, text: str) -> list[str]:
    return [t.lstrip("Ġ") for t in self._hf_tokenizer.tokenize(text)]


def normalize_answer(s: str) -> str:
  """Lowercases, drops punctuation, collapses whitespace; keeps articles."""
  s = _as_text(s).lower()
  s = "".join(ch for ch in s if ch not in _PUNCTUATION)
  return " ".join(s.split())


def category_key(category: str) -> str:
  """The official per-category key: lowercase words joined by underscores."""
  return "_".join(_as_text(category).lower().split())


def _as_text(value: Any) -> str:
  # seqio numpy iterators yield bytes; everything else should already be text.
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, str):
    return value
  raise TypeError(
      f"Expected str or bytes, got {type(value).__name__}: {value!r}")


def _as_references(references: Any, where: str) -> list[str]:
  """Validates one example's references: a non-empty sequence of strings."""
  # A bare string is a sequence too; iterating it would silently score against
  # single characters, so it is rejected rather than guessed at.
  if isinstance(references, (str, bytes)):
    raise TypeError(
        f"{where}: references must be a sequence of strings, got a single "
        f"string {references!r}; wrap it in a list.")
  refs = [_as_text(r) for r in references]
  if not refs:
    raise ValueError(f"{where}: has no references.")
  return refs


def _make_scorer(
    tokenizer: Optional[RougeTokenizer]) -> rouge_scorer.RougeScorer:
  if tokenizer is None:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
  # As in the official cross-lingual track: a custom tokenizer, no stemmer
  # (rouge-score ignores `use_stemmer` when a tokenizer is given anyway).
  return rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizer)


_default_scorer: Optional[rouge_scorer.RougeScorer] = None


def _get_scorer(
    tokenizer: Optional[RougeTokenizer]) -> rouge_scorer.RougeScorer:
  global _default_scorer
  if tokenizer is not None:
    return _make_scorer(tokenizer)
  if _default_scorer is None:  # Built lazily: no work at import time.
    _default_scorer = _make_scorer(None)
  return _default_scorer


def _exact_match(prediction: str, references: Sequence[str]) -> float:
  normalized = normalize_answer(prediction)
  return float(any(normalized == normalize_answer(r) for r in references))


def _rouge_l(scorer: rouge_scorer.RougeScorer, prediction: str,
             references: Sequence[str]) -> float:
  # rouge-score's argument order is score(target, prediction).
  return max(
      scorer.score(target=r, prediction=prediction)["rougeL"].fmeasure
      for r in references)


def exact_match(prediction: str, references: Sequence[str]) -> float:
  """1.0 if the normalized prediction equals any normalized reference, else 0.0.

  Args:
    prediction: the generated text.
    references: one or more acceptable answers (a list, not a bare string).

  Returns:
    0.0 or 1.0 (not multiplied by 100).
  """
  return _exact_match(_as_text(prediction),
                      _as_references(references, "example"))


def rouge_l(prediction: str, references: Sequence[str], *,
            tokenizer: Optional[RougeTokenizer] = None) -> float:
  """ROUGE-L F-measure of the prediction, maximised over references.

  Args:
    prediction: the generated text (raw, not normalized, as the official code).
    references: one or more acceptable answers (a list, not a bare string).
    tokenizer: None for the official English setting (rouge-score's default
      tokenizer with Porter stemming); otherwise a `RougeTokenizer`.

  Returns:
    A float in [0, 1] (not multiplied by 100).
  """
  return _rouge_l(_get_scorer(tokenizer), _as_text(prediction),
                  _as_references(references, "example"))


def _check_length(name: str, values: Optional[Sequence[Any]], n: int) -> None:
  if values is not None and len(values) != n:
    raise ValueError(
        f"{name} has {len(values)} entries but there are {n} predictions.")


def _mean_metrics(em: Sequence[float], rl: Sequence[float]) -> dict[str, float]:
  n = len(em)
  return {
      "exact_match": 100.0 * sum(em) / n,
      "rougeL": 100.0 * sum(rl) / n,
      "num_examples": n,
  }


def _grouped(keys: Iterable[str], em: Sequence[float],
             rl: Sequence[float]) -> dict[str, dict[str, float]]:
  groups: dict[str, list[int]] = collections.defaultdict(list)
  for i, key in enumerate(keys):
    groups[key].append(i)
  return {
      key: _mean_metrics([em[i] for i in idx], [rl[i] for i in idx])
      for key, idx in sorted(groups.items())
  }


def compute_generation_metrics(
    predictions: Sequence[str],
    references_lists: Sequence[Sequence[str]],
    task_names: Optional[Sequence[str]] = None,
    categories: Optional[Sequence[str]] = None,
    *,
    tokenizer: Optional[RougeTokenizer] = None,
) -> dict[str, Any]:
  """Exact match and ROUGE-L (x100) overall, per task and per category.

  Args:
    predictions: one generated string (or utf-8 bytes) per example. Missing
      predictions should be passed as "" (the official script does the same).
    references_lists: per example, a non-empty sequence of reference strings.
    task_names: optional per-example task name, for `per_task`.
    categories: optional per-example SNI task category, for `per_category`;
      keys are normalized with `category_key` as in the official script.
    tokenizer: see `rouge_l`.

  Returns:
    `{"overall": m, "per_task": {task: m}, "per_category": {category: m}}` where
    each `m` is `{"exact_match": float, "rougeL": float, "num_examples": int}`
    with the metrics in [0, 100]. `per_task` / `per_category` are empty dicts
    when the corresponding argument is None.

  Raises:
    ValueError: lengths differ, there are no examples, or an example (named by
      its index) has no references.
    TypeError: an example's references are a bare string.
  """
  n = len(predictions)
  _check_length("references_lists", references_lists, n)
  _check_length("task_names", task_names, n)
  _check_length("categories", categories, n)
  if n == 0:
    raise ValueError("compute_generation_metrics needs at least one example.")

  scorer = _get_scorer(tokenizer)
  em, rl = [], []
  for i, (prediction, references) in enumerate(
      zip(predictions, references_lists)):
    refs = _as_references(references, f"example {i}")
    pred = _as_text(prediction)
    em.append(_exact_match(pred, refs))
    rl.append(_rouge_l(scorer, pred, refs))

  return {
      "overall": _mean_metrics(em, rl),
      "per_task": ({} if task_names is None else
                   _grouped((_as_text(t) for t in task_names), em, rl)),
      "per_category": ({} if categories is None else
                       _grouped((category_key(c) for c in categories), em, rl)),
  }

