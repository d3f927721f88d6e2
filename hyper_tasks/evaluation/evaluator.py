"""Evaluation and inference of a (hyper-)T5 over seqio tasks and mixtures.

  evaluate(model, params, name, ...)          -> report dict (report.py schema)
  evaluate_many(model, params, names, ...)    -> one report over several names,
                                                 optionally with controls
  evaluate_examples(model, params, records, ...) -> the same over in-memory
                                                 records (notebooks, tests)
  infer(model, params, name, ..., output_path) -> jsonl of predictions

How a name is evaluated:

1. Its seqio tasks' examples are read as plain records
   (`pipeline.load_examples`). A task whose records carry answer choices (the
   P3 `rank_classification` preprocessor, or any record with `num_choices > 1`)
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
4. The hypernetwork runs once per distinct instruction: rows are ordered so
   that rows of one instruction are adjacent, and an adaptation cache
   (`instruction_cache.make_cache`) encodes each instruction once. A batch of
   one instruction runs with a per-task (unbatched) adaptation; a batch that
   straddles instructions runs with per-example adaptations. With
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
import functools
import json
import logging
import os
import time
from typing import Any, Collection, Iterable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from hyper_tasks.data import features as F
from hyper_tasks.data import pipeline
from hyper_tasks.data import registry
from hyper_tasks.data import vocab as vocab_lib
from hyper_tasks.evaluation import batching
from hyper_tasks.evaluation import controls as controls_lib
from hyper_tasks.evaluation import instruction_cache
from hyper_tasks.evaluation import metrics as metrics_lib
from hyper_tasks.evaluation import rank_classification as rank_lib
from hyper_tasks.evaluation import report as report_lib

Record = Mapping[str, Any]

# Short control names accepted by `evaluate` -> controls.CONTROLS keys.
CONTROL_ALIASES = {
    "shuffle": "shuffled_instruction",
    "shuffled": "shuffled_instruction",
    "random": "random_instruction",
    "empty": "empty_instruction",
}
DECODE_METHODS = ("greedy", "beam")
GENERATION = "generation"
RANK_CLASSIFICATION = "rank_classification"
_UNCATEGORIZED = "uncategorized"


def control_name(control: Optional[str]) -> Optional[str]:
  """The canonical controls.CONTROLS name of `control` (None stays None)."""
  if control is None:
    return None
  name = CONTROL_ALIASES.get(control, control)
  if name not in controls_lib.CONTROLS:
    raise ValueError(
        f"Unknown control {control!r}; use one of "
        f"{sorted(CONTROL_ALIASES) + sorted(controls_lib.CONTROLS)} or None.")
  return name


# -- loading ------------------------------------------------------------------


@dataclasses.dataclass
class TaskRecords:
  """The records of one seqio task and how they are evaluated."""
  name: str
  records: list[dict[str, Any]]
  rank_classification: bool


def _has_rank_preprocessor(task) -> bool:
  from hyper_tasks.data import p3  # pylint: disable=g-import-not-at-top
  return any(getattr(prep, "func", prep) is p3.rank_classification
             for prep in getattr(task, "preprocessors", ()))


def _example_key(record: Record) -> tuple[str, str, str]:
  return (str(record[F.TASK_NAMES]), str(record[F.TEMPLATE]),
          str(record[F.EXAMPLE_ID]))


def _first_complete_examples(rows: Sequence[dict[str, Any]],
                             max_examples: Optional[int],
                             exhausted: bool) -> tuple[list[dict], int]:
  """Rows of the first `max_examples` examples with all their choices.

  Returns:
    (rows, number of complete examples seen). An incomplete example at the end
    of a read that was cut short is dropped (its other choices were not read);
    incomplete examples of an exhausted read are kept, for validation to name.
  """
  groups: dict[tuple, list[dict]] = collections.OrderedDict()
  for row in rows:
    groups.setdefault(_example_key(row), []).append(row)
  out, complete = [], 0
  for group in groups.values():
    is_complete = len(group) == int(group[0][F.NUM_CHOICES])
    complete += is_complete
    if not is_complete and not exhausted:
      continue
    if max_examples is not None and complete > max_examples:
      break
    out.extend(group)
  return out, complete


def _load_rank_rows(task_name: str, split: str, max_examples: Optional[int],
                    lengths: Mapping[str, int]) -> list[dict[str, Any]]:
  """Reads enough rows for `max_examples` complete rank-classification examples."""
  if max_examples is None:
    rows = pipeline.load_examples(task_name, split, None, lengths)
    return _first_complete_examples(rows, None, exhausted=True)[0]
  limit = max(4 * max_examples, 8)
  while True:
    rows = pipeline.load_examples(task_name, split, limit, lengths)
    exhausted = len(rows) < limit
    out, complete = _first_complete_examples(rows, max_examples, exhausted)
    if exhausted or complete > max_examples:
      return out
    limit *= 2


def _cap_per_group(records: Sequence[dict[str, Any]],
                   max_examples: Optional[int]) -> list[dict[str, Any]]:
  """The records of the first `max_examples` examples of each (task, template).

  Rows of one rank-classification example share an example key and count once.
  """
  if max_examples is None:
    return list(records)
  seen: dict[tuple[str, str], set] = collections.defaultdict(set)
  out = []
  for index, record in enumerate(records):
    task, template, example_id = _example_key(record)
    examples = seen[(task, template)]
    key = example_id if int(record.get(F.NUM_CHOICES, 1)) > 1 else index
    if key not in examples and len(examples) >= max_examples:
      continue
    examples.add(key)
    out.append(record)
  return out


def load_task_records(name: str, split: str = "test", *,
                      max_examples: Optional[int] = None,
                      sequence_lengths: Optional[Mapping[str, int]] = None
                      ) -> list[TaskRecords]:
  """Records of every seqio task of `name` (a task or mixture) that has `split`.

  Args:
    name: seqio task or mixture name.
    split: the split to read.
    max_examples: per (task, template) group (see `_cap_per_group`); counts
      examples, not answer-choice rows. Token-level tasks (C4-style) are capped
      per seqio task instead: they are not read in full.
    sequence_lengths: only used by token-level tasks (C4-style).

  Raises:
    ValueError: no task of `name` has `split`, or none has examples.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  provider = pipeline.get_provider(name)
  tasks = (provider.tasks if isinstance(provider, seqio.Mixture)
           else [provider])
  lengths = dict(sequence_lengths or pipeline.DEFAULT_SEQUENCE_LENGTHS)
  out = []
  for task in tasks:
    if split not in task.splits:
      logging.info("evaluation: %s has no split %r; skipped.", task.name, split)
      continue
    if _has_rank_preprocessor(task):
      # One P3 task is one template: reading its first examples is the cap.
      records = _load_rank_rows(task.name, split, max_examples, lengths)
      rank = True
    elif registry.is_text_level(task.name):
      # One task may hold many groups (all SNI test tasks): read it in full
      # (text records are cheap) and cap each group.
      records = pipeline.load_examples(task.name, split, None, lengths)
      rank = any(int(r.get(F.NUM_CHOICES, 1)) > 1 for r in records)
    else:
      records = pipeline.load_examples(task.name, split, max_examples, lengths)
      rank = False
    records = _cap_per_group(records, max_examples)
    if not records:
      logging.warning("evaluation: %s/%s has no examples%s.", task.name, split,
                      " with answer choices" if rank else "")
      continue
    out.append(TaskRecords(task.name, records, rank))
  if not out:
    available = sorted({s for t in tasks for s in t.splits})
    raise ValueError(
        f"{name!r} has no examples in split {split!r} (its tasks have splits "
        f"{available}; rank-classification tasks need answer choices).")
  return out


def task_vocabulary(name: str):
  """The targets vocabulary of `name`'s first task."""
  return pipeline.task_vocabulary(name)


# -- validation ----------------------------------------------------------------


def _where(record: Record, index: int) -> str:
  return (f"task {record.get(F.TASK_NAMES)!r} example "
          f"{record.get(F.EXAMPLE_ID) or index!r}")


def _references(record: Record, index: int) -> list[str]:
  """The reference list of a generation record, or a clear error."""
  raw = record.get(F.REFERENCES)
  if raw is None:
    raise ValueError(f"{_where(record, index)} has no {F.REFERENCES!r} field; "
                     "generation metrics need references.")
  refs = json.loads(raw) if isinstance(raw, str) else list(raw)
  if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
    raise ValueError(f"{_where(record, index)}: references must be a list of "
                     f"strings, got {raw!r}.")
  if not refs:
    raise ValueError(f"{_where(record, index)} has no references; generation "
                     "metrics need at least one.")
  return refs


def _check_rank_records(records: Sequence[Record]) -> None:
  """Every example has an id, all its choices and a correct one."""
  by_key: dict[tuple, list[Record]] = collections.OrderedDict()
  for i, record in enumerate(records):
    for key in (F.EXAMPLE_ID, F.CHOICE_INDEX, F.IS_CORRECT, F.NUM_CHOICES):
      if key not in record:
        raise ValueError(f"{_where(record, i)} has no {key!r} field; rank "
                         "classification needs answer-choice rows.")
    if not str(record[F.EXAMPLE_ID]):
      raise ValueError(f"task {record.get(F.TASK_NAMES)!r} record {i} has an "
                       "empty example_id; rank classification groups the "
                       "choices of an example by it.")
    by_key.setdefault(_example_key(record), []).append(record)
  for (task, template, example_id), group in by_key.items():
    where = (f"task {task!r} template {template!r} example {example_id!r}")
    n = int(group[0][F.NUM_CHOICES])
    if n < 1:
      raise ValueError(f"{where} has no answer choices.")
    indices = sorted(int(r[F.CHOICE_INDEX]) for r in group)
    if indices != list(range(n)):
      raise ValueError(f"{where} has choice rows {indices}, expected "
                       f"0..{n - 1}.")
    if not any(int(r[F.IS_CORRECT]) for r in group):
      choices = [r[F.TARGETS] for r in sorted(
          group, key=lambda r: int(r[F.CHOICE_INDEX]))]
      raise ValueError(f"{where}: no answer choice is marked correct "
                       f"(choices {choices}).")


# -- model side ----------------------------------------------------------------


def _compiled(model) -> dict:
  """Jitted functions of `model`, kept on the model so that repeated
  evaluations (e.g. during training) compile once."""
  return vars(model).setdefault("_evaluation_jit", {})


def _score_fn(model):
  fns = _compiled(model)
  if "score" not in fns:
    fns["score"] = jax.jit(
        lambda params, batch, adaptation: model.score_batch(
            params, batch, adaptation))
  return fns["score"]


def _predict_fn(model, method: str, num_beams: int, max_decode_length: int):
  key = ("predict", method, num_beams if method == "beam" else 1,
         max_decode_length)
  fns = _compiled(model)
  if key not in fns:
    fns[key] = jax.jit(functools.partial(
        model.predict_batch, method=method, num_beams=num_beams,
        max_decode_length=max_decode_length))
  return fns[key]


def _encode_fn(model):
  fns = _compiled(model)
  if "encode" not in fns:
    fns["encode"] = jax.jit(model.encode_instruction)
  return fns["encode"]


def _pad_adaptation(adaptation, batch_size: int):
  """Per-example adaptation `[n, ...]` -> `[batch_size, ...]` (repeat last)."""
  def pad(x):
    n = x.shape[0]
    if n == batch_size:
      return x
    return jnp.concatenate(
        [x, jnp.repeat(x[-1:], batch_size - n, axis=0)], axis=0)
  return jax.tree.map(pad, adaptation)


class _Runner:
  """Runs the model over fixed-size batches; owns the adaptation cache."""

  def __init__(self, model, params, batch_size: int, use_cache: bool):
    self.model = model
    self.params = nn.unbox(params)
    self.batch_size = batch_size
    self.uses_instruction = bool(model.uses_instruction)
    self.cache = None
    if self.uses_instruction and use_cache:
      self.cache = instruction_cache.make_cache(
          model, self.params, batch_size=batch_size,
          encode_fn=_encode_fn(model))
    self.uncached_hypernet_rows = 0

  @property
  def hypernet_calls(self) -> int:
    if self.cache is not None:
      return int(self.cache.hypernet_runs)
    return self.uncached_hypernet_rows

  @property
  def cache_hits(self) -> int:
    return int(self.cache.hits) if self.cache is not None else 0

  def _inputs(self, arrays: Mapping[str, np.ndarray], batch: batching.Batch,
              keys: Sequence[str]):
    """(batch dict, adaptation) for one batch."""
    feed = batching.gather(arrays, batch.indices, keys)
    if not self.uses_instruction:
      return feed, None
    hyper = arrays[F.HYPER_ENCODER_INPUT_TOKENS]
    if self.cache is None:
      # The model runs the hypernetwork on every row inside the call.
      feed[F.HYPER_ENCODER_INPUT_TOKENS] = hyper[batch.indices]
      self.uncached_hypernet_rows += batch.num_real
      return feed, None
    adaptation = self.cache.get(hyper[batch.real_indices])
    if batch.homogeneous:
      return feed, adaptation.index(0)  # One per-task adaptation, broadcast.
    return feed, _pad_adaptation(adaptation, self.batch_size)

  def _batches(self, encoded: batching.EncodedRows) -> list[batching.Batch]:
    order = np.arange(len(encoded))
    hyper = None
    if self.uses_instruction:
      hyper = encoded.arrays[F.HYPER_ENCODER_INPUT_TOKENS]
      order = batching.instruction_order(hyper)
    return batching.make_batches(order, self.batch_size, hyper)

  def score(self, encoded: batching.EncodedRows, *, progress: bool,
            desc: str) -> np.ndarray:
    """`[N]` summed target log-likelihood of every row."""
    fn = _score_fn(self.model)
    keys = (F.ENCODER_INPUT_TOKENS, F.DECODER_INPUT_TOKENS,
            F.DECODER_TARGET_TOKENS, F.DECODER_LOSS_WEIGHTS)
    scores = np.zeros(len(encoded), dtype=np.float64)
    for batch in tqdm.tqdm(self._batches(encoded), desc=desc, unit="batch",
                           disable=not progress, leave=False):
      feed, adaptation = self._inputs(encoded.arrays, batch, keys)
      out = np.asarray(fn(self.params, feed, adaptation))
      scores[batch.real_indices] = out[:batch.num_real]
    return scores

  def generate(self, encoded: batching.EncodedRows, *, method: str,
               num_beams: int, max_decode_length: int, progress: bool,
               desc: str) -> np.ndarray:
    """`[N, max_decode_length]` decoded token ids of every row."""
    fn = _predict_fn(self.model, method, num_beams, max_decode_length)
    out = np.zeros((len(encoded), max_decode_length), dtype=np.int32)
    for batch in tqdm.tqdm(self._batches(encoded), desc=desc, unit="batch",
                           disable=not progress, leave=False):
      feed, adaptation = self._inputs(encoded.arrays, batch,
                                      (F.ENCODER_INPUT_TOKENS,))
      tokens = np.asarray(fn(self.params, feed, adaptation))
      out[batch.real_indices] = tokens[:batch.num_real]
    return out


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


def apply_control(records: Sequence[Record], control: str, *, seed: int = 0,
                  rank_classification_tasks: Optional[Collection[str]] = None
                  ) -> list[dict[str, Any]]:
  """Rewrites the instructions of `records` by a control, per EXAMPLE.

  controls.py numbers rows; the answer-choice rows of one rank-classification
  example must keep one shared instruction, so the control is applied to one
  representative row per example and copied to the example's other rows.

  Args:
    records: features.py records.
    control: a control name (see `control_name`).
    seed: the control's seed.
    rank_classification_tasks: `task_names` whose rows are answer choices;
      None: those with a record whose `num_choices > 1`.

  Returns:
    New records (inputs untouched), in the input order.
  """
  control = control_name(control)
  if control is None:
    raise ValueError("apply_control needs a control, got None.")
  if rank_classification_tasks is None:
    rank_classification_tasks = {
        str(r[F.TASK_NAMES]) for r in records
        if int(r.get(F.NUM_CHOICES, 1)) > 1}
  rank_tasks = set(rank_classification_tasks)
  representatives, owner = [], []
  index_of: dict[tuple, int] = {}
  for record in records:
    key = (_example_key(record) if str(record[F.TASK_NAMES]) in rank_tasks
           else None)
    if key is not None and key in index_of:
      owner.append(index_of[key])
      continue
    if key is not None:
      index_of[key] = len(representatives)
    owner.append(len(representatives))
    representatives.append(record)
  rewritten = controls_lib.apply_control(control, representatives, seed)
  out = []
  for record, o in zip(records, owner):
    new = dict(record)
    new[F.HYPER_INPUTS] = rewritten[o][F.HYPER_INPUTS]
    out.append(new)
  return out


def _categories(records: Sequence[Record]) -> Optional[list[str]]:
  cats = [str(r.get(F.CATEGORY) or "") for r in records]
  if not any(cats):
    return None
  return [c or _UNCATEGORIZED for c in cats]


def run_records(model, params, records: Sequence[Record], *,
                sequence_lengths: Mapping[str, int],
                vocabulary: vocab_lib.VocabularyLike,
                rank_classification_tasks: Optional[Collection[str]] = None,
                batch_size: int = 32,
                decode_method: str = "greedy",
                num_beams: int = 4,
                max_decode_length: Optional[int] = None,
                control: Optional[str] = None,
                use_cache: bool = True,
                progress: bool = True,
                seed: int = 0,
                desc: str = "eval") -> RunResult:
  """Evaluates in-memory records (the core of `evaluate` and `infer`).

  Args:
    model: an `EncoderDecoderModel`.
    params: its parameters (boxed or not).
    records: features.py records. Rank-classification records are one row per
      (example, choice) as produced by P3's `rank_classification`.
    sequence_lengths: `{"hyper_inputs": Lh, "inputs": Li, "targets": Lt}`.
    vocabulary: the tasks' vocabulary (or a name/path).
    rank_classification_tasks: `task_names` evaluated by rank classification;
      None: those with a record whose `num_choices > 1`.
    batch_size: rows per model call.
    decode_method: "greedy" or "beam".
    num_beams: beams of beam search.
    max_decode_length: decoded tokens; None means `sequence_lengths["targets"]`.
    control: None or a control name (see `control_name`).
    use_cache: run the hypernetwork once per distinct instruction.
    progress: show progress bars.
    seed: the control's seed.
    desc: progress-bar label.

  Returns:
    A `RunResult`.
  """
  if decode_method not in DECODE_METHODS:
    raise ValueError(f"decode_method must be one of {DECODE_METHODS}, got "
                     f"{decode_method!r}.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  lengths = batching.check_sequence_lengths(sequence_lengths)
  records = [dict(r) for r in records]
  if not records:
    raise ValueError("No records to evaluate.")
  for i, record in enumerate(records):
    if F.TASK_NAMES not in record:
      raise ValueError(f"record {i} has no {F.TASK_NAMES!r} field.")
  if rank_classification_tasks is None:
    rank_classification_tasks = {
        str(r[F.TASK_NAMES]) for r in records
        if int(r.get(F.NUM_CHOICES, 1)) > 1}
  rank_tasks = set(rank_classification_tasks)
  is_rank = [str(r[F.TASK_NAMES]) in rank_tasks for r in records]
  gen_records = [r for r, k in zip(records, is_rank) if not k]
  rank_records = [r for r, k in zip(records, is_rank) if k]
  # Validate everything before running the model, so a bad record fails fast.
  references = [_references(r, i) for i, r in enumerate(gen_records)]
  if rank_records:
    _check_rank_records(rank_records)
  control = control_name(control)
  if control is not None:
    records = apply_control(records, control, seed=seed,
                            rank_classification_tasks=rank_tasks)
    gen_records = [r for r, k in zip(records, is_rank) if not k]
    rank_records = [r for r, k in zip(records, is_rank) if k]

  runner = _Runner(model, params, batch_size, use_cache)
  truncated = {k: 0 for k in F.TOKEN_FEATURES}

  rank_metrics, rank_outputs = {}, []
  if rank_records:
    encoded = batching.encode_records(rank_records, vocabulary, lengths)
    for k, v in encoded.truncated.items():
      truncated[k] += v
    if encoded.truncated[F.TARGETS]:
      logging.warning(
          "evaluation: %d answer choices were truncated to %d target tokens; "
          "their scores cover only the kept tokens.",
          encoded.truncated[F.TARGETS], lengths[F.TARGETS])
    scores = runner.score(encoded, progress=progress,
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
    encoded = batching.encode_records(gen_records, vocabulary, lengths)
    for k, v in encoded.truncated.items():
      truncated[k] += v
    length = int(max_decode_length or lengths[F.TARGETS])
    tokens = runner.generate(encoded, method=decode_method,
                             num_beams=num_beams, max_decode_length=length,
                             progress=progress, desc=f"{desc} generation")
    predictions = pipeline.detokenize(tokens, vocabulary)
    gen_metrics = metrics_lib.compute_generation_metrics(
        predictions, references, [str(r[F.TASK_NAMES]) for r in gen_records],
        _categories(gen_records))
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


def _sections(result: RunResult) -> dict[str, Any]:
  return {"generation": result.generation,
          "rank_classification": result.rank_classification,
          "hypernet_calls": result.hypernet_calls,
          "cache_hits": result.cache_hits,
          "num_examples": result.num_examples}


def _build_report(result: RunResult, *, step: int, config_str: Optional[str],
                  checkpoint: Optional[str], control: Optional[str],
                  extra: Mapping[str, Any]) -> dict[str, Any]:
  if control is None:
    report = report_lib.make_report(
        step, checkpoint=checkpoint, config=config_str or "",
        generation=result.generation,
        rank_classification=result.rank_classification,
        hypernet_calls=result.hypernet_calls, cache_hits=result.cache_hits,
        num_examples=result.num_examples)
  else:
    report = report_lib.make_report(
        step, checkpoint=checkpoint, config=config_str or "",
        controls={control: _sections(result)})
  report.update(extra)
  report["control"] = control
  report["truncated"] = dict(result.truncated)
  report["num_rank_classification_rows"] = result.num_rank_rows
  return report


def evaluate_examples(model, params, records: Sequence[Record], *,
                      sequence_lengths: Mapping[str, int],
                      vocabulary: vocab_lib.VocabularyLike,
                      rank_classification_tasks: Optional[Collection[str]] = None,
                      batch_size: int = 32, decode_method: str = "greedy",
                      num_beams: int = 4,
                      max_decode_length: Optional[int] = None,
                      control: Optional[str] = None, use_cache: bool = True,
                      step: int = 0, config_str: Optional[str] = None,
                      checkpoint: Optional[str] = None, progress: bool = True,
                      seed: int = 0) -> dict[str, Any]:
  """`evaluate` over in-memory records; see `run_records` for the arguments."""
  start = time.time()
  control = control_name(control)
  result = run_records(
      model, params, records, sequence_lengths=sequence_lengths,
      vocabulary=vocabulary,
      rank_classification_tasks=rank_classification_tasks,
      batch_size=batch_size, decode_method=decode_method, num_beams=num_beams,
      max_decode_length=max_decode_length, control=control,
      use_cache=use_cache, progress=progress, seed=seed)
  extra = {"decoding": _decoding(decode_method, num_beams, max_decode_length,
                                 sequence_lengths),
           "seconds": time.time() - start}
  return _build_report(result, step=step, config_str=config_str,
                       checkpoint=checkpoint, control=control, extra=extra)


def _decoding(method, num_beams, max_decode_length, sequence_lengths):
  return {"method": method,
          "num_beams": int(num_beams) if method == "beam" else 1,
          "max_decode_length": int(max_decode_length or
                                   sequence_lengths[F.TARGETS])}


def _load(names: Sequence[str], split: str, max_examples, sequence_lengths
          ) -> tuple[list[dict], set[str]]:
  """Records of the union of the names' seqio tasks (each task once)."""
  records, seen = [], set()
  mode_of: dict[str, tuple[bool, str]] = {}  # task_names -> (rank?, seqio task)
  for name in names:
    for task in load_task_records(name, split, max_examples=max_examples,
                                  sequence_lengths=sequence_lengths):
      if task.name in seen:
        continue
      seen.add(task.name)
      for task_name in {str(r[F.TASK_NAMES]) for r in task.records}:
        rank, other = mode_of.setdefault(
            task_name, (task.rank_classification, task.name))
        if rank != task.rank_classification:
          # Records are routed by task name; one name cannot take both paths.
          raise ValueError(
              f"Task {task_name!r} is evaluated by rank classification in "
              f"{(task.name if task.rank_classification else other)!r} and by "
              f"generation in "
              f"{(other if task.rank_classification else task.name)!r}; "
              "evaluate them in separate calls.")
      records.extend(task.records)
  rank_tasks = {t for t, (rank, _) in mode_of.items() if rank}
  return records, rank_tasks


def evaluate(model, params, name: str, *, split: str = "test",
             sequence_lengths: Mapping[str, int], batch_size: int = 32,
             vocabulary: Optional[vocab_lib.VocabularyLike] = None,
             max_examples: Optional[int] = None, decode_method: str = "greedy",
             num_beams: int = 4, max_decode_length: Optional[int] = None,
             control: Optional[str] = None, use_cache: bool = True,
             step: int = 0, config_str: Optional[str] = None,
             progress: bool = True, seed: int = 0,
             checkpoint: Optional[str] = None) -> dict[str, Any]:
  """Evaluates `model` on a seqio task or mixture; returns the report.

  Args:
    model: an `EncoderDecoderModel`.
    params: its parameters (boxed or not).
    name: seqio task or mixture (registered; see `hyper_tasks.data`).
    split: the split to evaluate.
    sequence_lengths: `{"hyper_inputs": Lh, "inputs": Li, "targets": Lt}`.
    batch_size: rows per model call (every call has exactly this many).
    vocabulary: None: the task's own vocabulary.
    max_examples: per (task, template) group, in examples (not answer-choice
      rows): per SNI task, per P3 template, per toy phrasing.
    decode_method: "greedy" or "beam" (generation tasks).
    num_beams: beams for "beam".
    max_decode_length: None: `sequence_lengths["targets"]`.
    control: None, "shuffle", "random" or "empty" (or a controls.CONTROLS
      name); a controlled run is reported under `report["controls"]`.
    use_cache: encode each distinct instruction once (see module docstring).
    step: training step recorded in the report.
    config_str: gin operative config recorded in the report.
    progress: tqdm progress bars with ETA.
    seed: the control's seed.
    checkpoint: checkpoint path recorded in the report.

  Returns:
    The report (report.py schema plus the extra keys of the module docstring).

  Raises:
    ValueError: unknown control or decode method, a split with no examples, a
      generation example without references, or a rank-classification example
      without (correct) answer choices; the message names task and example.
  """
  return evaluate_many(
      model, params, [name], split=split, sequence_lengths=sequence_lengths,
      batch_size=batch_size, vocabulary=vocabulary, max_examples=max_examples,
      decode_method=decode_method, num_beams=num_beams,
      max_decode_length=max_decode_length, use_cache=use_cache, step=step,
      config_str=config_str, progress=progress, seed=seed,
      checkpoint=checkpoint, control=control)


def evaluate_many(model, params, names: Sequence[str], *, split: str = "test",
                  sequence_lengths: Mapping[str, int], batch_size: int = 32,
                  vocabulary: Optional[vocab_lib.VocabularyLike] = None,
                  max_examples: Optional[int] = None,
                  decode_method: str = "greedy", num_beams: int = 4,
                  max_decode_length: Optional[int] = None,
                  control: Optional[str] = None,
                  controls: Iterable[str] = (), use_cache: bool = True,
                  step: int = 0, config_str: Optional[str] = None,
                  progress: bool = True, seed: int = 0,
                  checkpoint: Optional[str] = None) -> dict[str, Any]:
  """One report over the union of several names' tasks (each task once).

  Args:
    names: seqio tasks or mixtures.
    control: as in `evaluate` (the main run itself is controlled).
    controls: extra controls, each run after the main one and added under
      `report["controls"][<control>]` (e.g. `("shuffle", "empty")`).
    Others: as in `evaluate`.

  Returns:
    The report; `report["name"]` joins the names with "+".
  """
  if isinstance(names, str):
    names = [names]
  if not names:
    raise ValueError("evaluate_many needs at least one name.")
  start = time.time()
  records, rank_tasks = _load(names, split, max_examples, sequence_lengths)
  if vocabulary is None:
    vocabulary = task_vocabulary(names[0])
  main_control = control_name(control)
  kwargs = dict(sequence_lengths=sequence_lengths, vocabulary=vocabulary,
                rank_classification_tasks=rank_tasks, batch_size=batch_size,
                decode_method=decode_method, num_beams=num_beams,
                max_decode_length=max_decode_length, use_cache=use_cache,
                progress=progress, seed=seed)
  label = "+".join(names)
  result = run_records(model, params, records, control=main_control,
                       desc=label, **kwargs)
  extra = {"name": label, "split": split,
           "decoding": _decoding(decode_method, num_beams, max_decode_length,
                                 sequence_lengths)}
  report = _build_report(result, step=step, config_str=config_str,
                         checkpoint=checkpoint, control=main_control,
                         extra=extra)
  for other in controls:
    other = control_name(other)
    controlled = run_records(model, params, records, control=other,
                             desc=f"{label} [{other}]", **kwargs)
    report["controls"][other] = _sections(controlled)
  report["seconds"] = time.time() - start
  report_lib.validate_report(report)
  return report


def infer(model, params, name: str, *, split: str = "test",
          sequence_lengths: Mapping[str, int], batch_size: int = 32,
          vocabulary: Optional[vocab_lib.VocabularyLike] = None,
          max_examples: Optional[int] = None, decode_method: str = "greedy",
          num_beams: int = 4, max_decode_length: Optional[int] = None,
          use_cache: bool = True, output_path: str,
          progress: bool = True) -> str:
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
  records, rank_tasks = _load([name], split, max_examples, sequence_lengths)
  if vocabulary is None:
    vocabulary = task_vocabulary(name)
  result = run_records(
      model, params, records, sequence_lengths=sequence_lengths,
      vocabulary=vocabulary, rank_classification_tasks=rank_tasks,
      batch_size=batch_size, decode_method=decode_method, num_beams=num_beams,
      max_decode_length=max_decode_length, use_cache=use_cache,
      progress=progress, desc=f"infer {name}")
  write_jsonl(output_path, result.rank_outputs + result.generation_outputs)
  logging.info("infer: %d examples of %s/%s -> %s (hypernetwork ran %d times, "
               "%d cache hits).", result.num_examples, name, split,
               output_path, result.hypernet_calls, result.cache_hits)
  return output_path


def write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> str:
  """Writes `rows` as jsonl (UTF-8, one object per line), atomically."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  os.replace(tmp, path)
  return path
