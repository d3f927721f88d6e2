"""Predictions to JSONL: ``python -m hyper_tasks.infer --gin_file=runs/infer.gin ...``.

Thin entry point: flags -> gin -> :func:`infer`, which loads the parameters (the
latest checkpoint in ``MODEL_DIR``, a given step, or an HF / t5x / other checkpoint at
``checkpoint_path``) and writes one line per example with
``hyper_tasks.evaluation.evaluator.infer`` to
``MODEL_DIR/inference/<name>_<split>_step<N>.jsonl`` (or ``output_path``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import gin
import jax

from hyper_tasks import entry
from hyper_tasks import eval as eval_lib
from hyper_tasks.data import pipeline
from hyper_tasks.evaluation import evaluator
from hyper_tasks.train import partitioning
from hyper_tasks.train import preflight
from hyper_tasks.train import train_config
from hyper_tasks.train import trainer

INFERENCE_SUBDIR = "inference"

_configurable = (gin.configurable(module="hyper_tasks.infer")
                 if __name__ != "__main__" else (lambda fn: fn))


@_configurable
def infer(*, model, model_dir: str, mixture_or_task_name: str,
          sequence_lengths: Mapping[str, int], split: str = "test",
          batch_size: int = 32, checkpoint_path: Optional[str] = None,
          checkpoint_step: Optional[int] = None, checkpoint_format: str = "auto",
          assignment_map=(), output_path: Optional[str] = None,
          max_examples: Optional[int] = None,
          infer_kwargs: Optional[Mapping[str, Any]] = None,
          progress: bool = True, check: Any = None,
          parallelism: Optional[train_config.Parallelism] = None) -> str:
  """Writes predictions for one task or mixture; returns the JSONL path.

  Args: as :func:`hyper_tasks.eval.evaluate`; ``infer_kwargs`` are further
  ``EvalOptions`` fields for ``evaluator.infer`` (``decode_method``,
  ``num_beams``, ...). ``check`` (``--check``): check without predicting;
  returns a ``preflight.CheckReport``. Placement, hosts and ``parallelism`` as
  in ``evaluate``; process 0 writes the file.
  """
  pipeline.check_vocabulary([mixture_or_task_name], model.config.vocab_size,
                            where="infer")
  if check is not None:
    return preflight.eval_report(
        kind="infer", model=model, names=[mixture_or_task_name], split=split,
        sequence_lengths=sequence_lengths, batch_size=batch_size,
        checkpoints_to_load=eval_lib.checkpoint_steps_to_load(
            model_dir, checkpoint_path, checkpoint_step),
        abstract_params=eval_lib.abstract_params(model, sequence_lengths),
        checkpoint_format=checkpoint_format, assignment_map=assignment_map)
  model_dir = trainer.check_model_dir(model_dir)
  partitioning.maybe_initialize_distributed()
  mesh, shardings = eval_lib.param_placement(model, sequence_lengths, parallelism)
  (path, step), = eval_lib.checkpoint_steps_to_load(model_dir, checkpoint_path,
                                                    checkpoint_step)
  params, step = eval_lib.load_model_params(model, path, step, sequence_lengths,
                                            checkpoint_format, assignment_map,
                                            shardings)
  if output_path is None:
    output_path = os.path.join(model_dir, INFERENCE_SUBDIR,
                               f"{mixture_or_task_name}_{split}_step{step}.jsonl")
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  options = evaluator.EvalOptions(
      split=split, sequence_lengths=dict(sequence_lengths),
      batch_size=batch_size, max_examples=max_examples,
      progress=progress and jax.process_index() == 0, mesh=mesh,
      **dict(infer_kwargs or {}))
  out = evaluator.infer(model, params, mixture_or_task_name, options,
                        output_path=output_path)
  print(f"predictions: {out}", flush=True)
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  return entry.run_gin_main(argv, "hyper_tasks.infer", "infer",
                            description="Write predictions of a hyper-tasks "
                            "model.")


if __name__ == "__main__":
  entry.run_as_script("hyper_tasks.infer")
