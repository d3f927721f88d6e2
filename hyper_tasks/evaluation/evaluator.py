"""Evaluation and inference of a (hyper-)T5 over seqio tasks and mixtures.

  evaluate(model, params, name, options)         -> report dict (report.py schema)
  evaluate_many(model, params, names, options)   -> one report over several
                                                    names, optionally with controls
  evaluate_examples(model, params, records, options) -> the same over in-memory
                                                    records (notebooks, tests)
  infer(model, params, name, options, output_path=...) -> jsonl of predictions

Every function takes one frozen `EvalOptions` (`options=`); its fields may also
be given as keywords (`evaluate(model, params, name, batch_size=8, ...)`), which
replace those of `options`.

How a name is evaluated:

1. Its seqio tasks' examples are read as plain records (records.py). A task
   registered for rank classification (`registry.evaluation_mode`: the P3
   score-eval tasks), or whose records carry answer choices (`num_choices > 1`),
   is evaluated by rank classification; any other by generation. Tasks in the
   report are the records' `task_names` (one seqio task of SNI test data holds
   all SNI test tasks). `max_examples` caps the examples (not answer-choice
   rows) of each (task, template) group, the first ones in source order: per
   SNI task, per P3 template, per toy phrasing.
2. A robustness control (`control`: shuffle / random / empty, see
   controls.py) rewrites the instructions, per example, before tokenization.
3. Records are tokenized with the data package's vocabulary into fixed-length
   arrays (batching.py) and cut into batches of exactly `batch_size` rows, so
   every jitted function compiles once per shape; the last batch is padded and
   its padded rows dropped.
4. The hypernetwork runs once per distinct instruction (runner.py): rows are
   ordered so that rows of one instruction are adjacent, and the adaptation
   cache (`models.cache.AdaptationCache`) encodes each instruction once. A
   batch of one instruction runs with the per-task (unbatched) adaptation; a
   batch that straddles instructions runs with per-example adaptations. With
   `use_cache=False` the hypernetwork runs inside every scoring/decoding call,
   once per row; results are the same (the test suite checks it).
5. Rank classification scores each (example, choice) row with `score_batch`
   (summed target log-likelihood) and reports accuracy by the sum rule and the
   per-token / per-character normalised rules, per template and per task
   (mean / median / min / max over templates). Generation decodes greedily or
   with beam search and reports SNI ROUGE-L / exact match per task, per
   category and overall.

Reports follow `report.make_report`, with these extra top-level keys: `name`,
`split`, `control`, `decoding` (method, beams, length), `truncated` (rows cut
per token feature), `num_rank_classification_rows`, `seconds`. A controlled run
puts its sections under `report["controls"][<control>]` and leaves the
top-level sections empty, so it never masquerades as the real result;
`evaluate_many(..., controls=[...])` puts the real run and its controls in one
report.

Models without a hypernetwork (`model.uses_instruction` False: plain T5, the
concatenated-instruction baselines, static PEFT) ignore `hyper_inputs`; the
counters stay 0 and controls have no effect on them (their instruction lives
inside `inputs`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time
from typing import Any, Collection, Iterable, Mapping, Optional, Sequence

import jax

from hyper_tasks.data import features as F
from hyper_tasks.data import pipeline
from hyper_tasks.evaluation import batching
from hyper_tasks.evaluation import metrics as metrics_lib
from hyper_tasks.evaluation import options as options_lib
from hyper_tasks.evaluation import rank_classification as rank_lib
from hyper_tasks.evaluation import records as records_lib
from hyper_tasks.evaluation import report as report_lib
from hyper_tasks.evaluation import runner as runner_lib

Record = records_lib.Record
EvalOptions = options_lib.EvalOptions  # The options of every function here.


# -- the evaluation run ----------------------------------------------------------


@dataclasses.dataclass
class RunResult:
  """What one pass over the records produced.

  Attributes:
    generation: `metrics.compute_generation_metrics` output ({} if none).
    rank_classification: `rank_classification.evaluate_rank_classification`
      output ({} if none).
    generation_outputs: one dict per generation example (jsonl rows).
    rank_outputs: one dict per rank-classification example (jsonl rows).
    hypernet_calls, cache_hits: counters of this pass.
    num_examples: generation examples + rank-classification examples.
    num_rank_rows: scored (example, choice) rows.
    truncated: rows cut per token feature.
  """
  generation: dict
  rank_classification: dict
  generation_outputs: list[dict]
  rank_outputs: list[dict]
  hypernet_calls: int
  cache_hits: int
  num_examples: int
  num_rank_rows: int
  truncated: dict[str, int]


def run_records(model, params, records: Sequence[Record],
                options: Optional[EvalOptions] = None, *,
                rank_classification_tasks: Optional[Collection[str]] = None,
                desc: str = "eval", **overrides) -> RunResult:
  """Evaluates in-memory records (the core of `evaluate` and `infer`).

  Args:
    model: an `EncoderDecoderModel`.
    params: its parameters (boxed or not).
    records: features.py records. Rank-classification records are one row per
      (example, choice) as produced by P3's `rank_classification`.
    options: `EvalOptions` (`sequence_lengths` and `vocabulary` required;
      `split`, `max_examples`, `controls` and the report fields are unused).
    rank_classification_tasks: `task_names` evaluated by rank classification;
      None: `records.rank_tasks_of(records)`.
    desc: progress-bar label.
    **overrides: `EvalOptions` fields.

  Returns:
    A `RunResult`.
  """
  options = options_lib.make_options(options, **overrides)
  lengths = options.lengths
  if options.vocabulary is None:
    raise ValueError("run_records needs options.vocabulary (the records' "
                     "tokenizer).")
  records = [dict(r) for r in records]
  if not records:
    raise ValueError("No records to evaluate.")
  for i, record in enumerate(records):
    if F.TASK_NAMES not in record:
      raise ValueError(f"record {i} has no {F.TASK_NAMES!r} field.")
  if rank_classification_tasks is None:
    rank_classification_tasks = records_lib.rank_tasks_of(records)
  rank_tasks = set(rank_classification_tasks)
  is_rank = [str(r[F.TASK_NAMES]) in rank_tasks for r in records]
  gen_records = [r for r, k in zip(records, is_rank) if not k]
  rank_records = [r for r, k in zip(records, is_rank) if k]
  # Validate everything before running the model, so a bad record fails fast.
  references = [records_lib.references(r, i) for i, r in enumerate(gen_records)]
  if rank_records:
    records_lib.check_rank_records(rank_records)
  if options.control is not None:
    records = records_lib.apply_control(records, options.control, seed=options.seed,
                            rank_classification_tasks=rank_tasks)
    gen_records = [r for r, k in zip(records, is_rank) if not k]
    rank_records = [r for r, k in zip(records, is_rank) if k]

  runner = runner_lib.Runner(model, params, options.batch_size,
                             options.use_cache, mesh=options.mesh)
  truncated = {k: 0 for k in F.TOKEN_FEATURES}
  vocabulary = options.vocabulary

  def encode(rows: Sequence[Record]) -> batching.EncodedRows:
    encoded = batching.encode_records(rows, vocabulary, lengths)
    for k, v in encoded.truncated.items():
      truncated[k] += v
    return encoded

  rank_metrics, rank_outputs = {}, []
  if rank_records:
    encoded = encode(rank_records)
    if encoded.truncated[F.TARGETS]:
      logging.warning(
          "evaluation: %d answer choices were truncated to %d target tokens; "
          "their scores cover only the kept tokens.",
          encoded.truncated[F.TARGETS], lengths[F.TARGETS])
    scores = runner.score(encoded, progress=options.progress,
                          desc=f"{desc} rank classification")
    rows = [{
        "example_id": str(r[F.EXAMPLE_ID]),
        "task": str(r[F.TASK_NAMES]),
        "template": str(r[F.TEMPLATE]),
        "choice_index": int(r[F.CHOICE_INDEX]),
        "is_correct": bool(int(r[F.IS_CORRECT])),
        "score": float(s),
        "num_target_tokens": int(n),
        "target_text": str(r[F.TARGETS]),
    } for r, s, n in zip(rank_records, scores, encoded.num_target_tokens)]
    rank_metrics = rank_lib.evaluate_rank_classification(rows)
    rank_outputs = _rank_outputs(rank_records, rows)

  gen_metrics, gen_outputs = {}, []
  if gen_records:
    encoded = encode(gen_records)
    tokens = runner.generate(
        encoded, method=options.decode_method, num_beams=options.num_beams,
        max_decode_length=options.decoding["max_decode_length"],
        progress=options.progress, desc=f"{desc} generation")
    predictions = pipeline.detokenize(tokens, vocabulary)
    gen_metrics = metrics_lib.compute_generation_metrics(
        predictions, references, [str(r[F.TASK_NAMES]) for r in gen_records],
        records_lib.categories(gen_records))
    gen_outputs = [{
        "task": str(r[F.TASK_NAMES]),
        "example_id": str(r.get(F.EXAMPLE_ID, "")),
        "category": str(r.get(F.CATEGORY, "")),
        "template": str(r.get(F.TEMPLATE, "")),
        "hyper_inputs": r[F.HYPER_INPUTS],
        "inputs": r[F.INPUTS],
        "prediction": p,
        "references": refs,
    } for r, p, refs in zip(gen_records, predictions, references)]

  return RunResult(
      generation=gen_metrics, rank_classification=rank_metrics,
      generation_outputs=gen_outputs, rank_outputs=rank_outputs,
      hypernet_calls=runner.hypernet_calls, cache_hits=runner.cache_hits,
      num_examples=len(gen_outputs) + len(rank_outputs),
      num_rank_rows=len(rank_records), truncated=truncated)


def _rank_outputs(records: Sequence[Record],
                  rows: Sequence[Mapping[str, Any]]) -> list[dict]:
  """One jsonl-ready dict per rank-classification example."""
  predictions = {
      (p["task"], p["template"], p["example_id"]): p
      for p in rank_lib.predict_choices(rows)}
  by_key: dict[tuple, list[tuple[Record, Mapping]]] = collections.OrderedDict()
  for record, row in zip(records, rows):
    by_key.setdefault((row["task"], row["template"], row["example_id"]),
                      []).append((record, row))
  out = []
  for key, group in by_key.items():
    group.sort(key=lambda pair: pair[1]["choice_index"])
    record = group[0][0]
    choices = [row["target_text"] for _, row in group]
    pred = predictions[key]
    out.append({
        "task": key[0], "template": key[1], "example_id": key[2],
        "hyper_inputs": record[F.HYPER_INPUTS], "inputs": record[F.INPUTS],
        "choices": choices,
        "scores": [row["score"] for _, row in group],
        "num_target_tokens": [row["num_target_tokens"] for _, row in group],
        "correct_indices": [row["choice_index"] for _, row in group
                            if row["is_correct"]],
        "prediction": choices[pred["predictions"]["sum"]],
        "prediction_index": pred["predictions"]["sum"],
        "predictions": pred["predictions"],
        "correct": pred["correct"],
    })
  return out


# -- reports ---------------------------------------------------------------------


def _sections(result: RunResult) -> dict[str, Any]:
  return {"generation": result.generation,
          "rank_classification": result.rank_classification,
          "hypernet_calls": result.hypernet_calls,
          "cache_hits": result.cache_hits,
          "num_examples": result.num_examples}


def _build_report(result: RunResult, options: EvalOptions,
                  extra: Mapping[str, Any]) -> dict[str, Any]:
  common = dict(checkpoint=options.checkpoint, config=options.config_str or "")
  if options.control is None:
    report = report_lib.make_report(options.step, **common,
                                    **_sections(result))
  else:
    report = report_lib.make_report(
        options.step, **common, controls={options.control: _sections(result)})
  report.update(extra)
  report["decoding"] = options.decoding
  report["control"] = options.control
  report["truncated"] = dict(result.truncated)
  report["num_rank_classification_rows"] = result.num_rank_rows
  return report


def evaluate_examples(model, params, records: Sequence[Record],
                      options: Optional[EvalOptions] = None, *,
                      rank_classification_tasks: Optional[Collection[str]] = None,
                      **overrides) -> dict[str, Any]:
  """`evaluate` over in-memory records; see `run_records` for the arguments."""
  start = time.time()
  options = options_lib.make_options(options, **overrides)
  result = run_records(model, params, records, options,
                       rank_classification_tasks=rank_classification_tasks)
  return _build_report(result, options, {"seconds": time.time() - start})


def evaluate(model, params, name: str, options: Optional[EvalOptions] = None,
             **overrides) -> dict[str, Any]:
  """Evaluates `model` on a seqio task or mixture; returns the report.

  Args:
    model: an `EncoderDecoderModel`.
    params: its parameters (boxed or not).
    name: seqio task or mixture (registered; see `hyper_tasks.data`).
    options: `EvalOptions`.
    **overrides: `EvalOptions` fields.

  Returns:
    The report (report.py schema plus the extra keys of the module docstring).

  Raises:
    ValueError: unknown control or decode method, a split with no examples, a
      generation example without references, or a rank-classification example
      without (correct) answer choices; the message names task and example.
  """
  return evaluate_many(model, params, [name], options, **overrides)


def _load(names: Sequence[str], options: EvalOptions
          ) -> tuple[list[dict], set[str], EvalOptions]:
  """(records, rank tasks, options with the vocabulary filled in)."""
  records, rank_tasks = records_lib.load(
      names, options.split, options.max_examples, options.sequence_lengths)
  if options.vocabulary is None:
    options = dataclasses.replace(options,
                                  vocabulary=records_lib.task_vocabulary(names[0]))
  return records, rank_tasks, options


def evaluate_many(model, params, names: Sequence[str],
                  options: Optional[EvalOptions] = None,
                  **overrides) -> dict[str, Any]:
  """One report over the union of several names' tasks (each task once).

  Args:
    names: seqio tasks or mixtures.
    options: as in `evaluate`; `control` controls the main run itself, each of
      `controls` is run after it and added under `report["controls"]`.
    **overrides: `EvalOptions` fields.

  Returns:
    The report; `report["name"]` joins the names with "+".
  """
  if isinstance(names, str):
    names = [names]
  if not names:
    raise ValueError("evaluate_many needs at least one name.")
  options = options_lib.make_options(options, **overrides)
  start = time.time()
  records, rank_tasks, options = _load(names, options)
  label = "+".join(names)
  result = run_records(model, params, records, options,
                       rank_classification_tasks=rank_tasks, desc=label)
  report = _build_report(result, options,
                         {"name": label, "split": options.split})
  for other in options.controls:
    controlled = run_records(model, params, records, options, control=other,
                             rank_classification_tasks=rank_tasks,
                             desc=f"{label} [{other}]")
    report["controls"][other] = _sections(controlled)
  report["seconds"] = time.time() - start
  report_lib.validate_report(report)
  return report


def infer(model, params, name: str, options: Optional[EvalOptions] = None, *,
          output_path: str, **overrides) -> str:
  """Writes one jsonl line of predictions per example of `name`.

  Generation examples: `task`, `example_id`, `category`, `template`,
  `hyper_inputs`, `inputs`, `prediction`, `references`. Rank-classification
  examples: `task`, `template`, `example_id`, `hyper_inputs`, `inputs`,
  `choices`, `scores`, `num_target_tokens`, `correct_indices`, `prediction`
  (the chosen text, sum rule), `prediction_index`, `predictions` and `correct`
  per rule. The file is written to a temporary name and renamed, so a reader
  never sees half of it.

  Returns:
    `output_path`.
  """
  options = options_lib.make_options(options, **overrides)
  if options.controls:
    raise ValueError("infer writes one run's predictions; options.controls "
                     f"{options.controls} apply to evaluate_many only.")
  records, rank_tasks, options = _load([name], options)
  result = run_records(model, params, records, options,
                       rank_classification_tasks=rank_tasks,
                       desc=f"infer {name}")
  if jax.process_index() == 0:  # Every process has the same rows.
    write_jsonl(output_path, result.rank_outputs + result.generation_outputs)
  logging.info("infer: %d examples of %s/%s -> %s (hypernetwork ran %d times, "
               "%d cache hits).", result.num_examples, name, options.split,
               output_path, result.hypernet_calls, result.cache_hits)
  return output_path


def write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> str:
  """Writes `rows` as jsonl (UTF-8, one object per line), atomically."""
  report_lib.atomic_write_text(path, "".join(
      json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
  return os.fspath(path)
