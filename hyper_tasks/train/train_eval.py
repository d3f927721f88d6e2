"""Evaluation during training: the evaluator on the current parameters.

Every ``eval_period`` steps the trainer calls :func:`run`, which hands the live
(sharded) parameters to ``hyper_tasks.evaluation.evaluator.evaluate_many`` and writes
the report the standalone ``eval`` entry point would: JSON in
``MODEL_DIR/eval_results/step_<N>.json`` and its scalars in TensorBoard under
``MODEL_DIR/eval``. Only process 0 writes.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import gin
import jax

from hyper_tasks.evaluation import evaluator
from hyper_tasks.evaluation import report as report_lib

EVAL_SUBDIR = "eval"


@gin.configurable(module="hyper_tasks.train")
@dataclasses.dataclass(frozen=True)
class TrainEval:
  """What to evaluate during training.

  Attributes:
    mixture_or_task_names: one seqio task or mixture, or several (one report over
      all their tasks).
    split: their split.
    sequence_lengths: default: the training lengths.
    batch_size: evaluation batch size.
    max_examples: cap on examples per task (quick checks).
    evaluate_kwargs: further ``EvalOptions`` fields (``decode_method``,
      ``controls``, ...).
  """
  mixture_or_task_names: Union[str, Sequence[str]]
  split: str = "test"
  sequence_lengths: Optional[Mapping[str, int]] = None
  batch_size: int = 8
  max_examples: Optional[int] = None
  evaluate_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def names(self) -> list[str]:
    names = self.mixture_or_task_names
    return [names] if isinstance(names, str) else list(names)


def run(cfg: TrainEval, model, params, step: int, model_dir: str,
        train_sequence_lengths: Mapping[str, int], mesh=None) -> dict:
  """Evaluates ``params`` at ``step`` and writes the report; returns it.

  ``mesh``: the training mesh; the parameters stay where training put them and
  each evaluation batch is split over its data axis (across hosts), so
  ``cfg.batch_size`` must divide by the data-parallel size.
  """
  options = evaluator.EvalOptions(
      split=cfg.split,
      sequence_lengths=dict(cfg.sequence_lengths or train_sequence_lengths),
      batch_size=cfg.batch_size, max_examples=cfg.max_examples, step=step,
      config_str=gin.config_str(), progress=False, mesh=mesh,
      **dict(cfg.evaluate_kwargs))
  rep = evaluator.evaluate_many(model, params, cfg.names, options)
  if jax.process_index() == 0:
    report_lib.write_report(model_dir, rep)
    report_lib.write_scalars(os.path.join(model_dir, EVAL_SUBDIR), step,
                             report_lib.flatten_metrics(rep))
  return rep
