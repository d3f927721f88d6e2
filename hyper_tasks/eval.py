"""Evaluate checkpoints: ``python -m hyper_tasks.eval --gin_file=runs/eval_sni.gin ...``.

Thin entry point (t5x style): flags -> gin -> :func:`evaluate`, which loads the
parameters (the latest checkpoint in ``MODEL_DIR``, a given step, every step, or an
HF / t5x / other checkpoint at ``checkpoint_path``), runs
``hyper_tasks.evaluation.evaluator.evaluate_many`` and writes
``MODEL_DIR/eval_results/step_<N>.json`` plus TensorBoard scalars in
``MODEL_DIR/eval``. Importable: ``evaluate(model=..., model_dir=..., ...)``.

Placement is training's: ``train.Parallelism`` (the same gin bindings as the
run's training) gives the mesh and the logical-axis rules (data parallel, FSDP,
model parallel); ``jax.distributed`` is initialised as for training
(``partitioning.maybe_initialize_distributed``). Our own checkpoints are read
straight onto the parameters' shards (``Checkpointer.restore_params``: no
optimizer state, no unsharded copy); other formats are read on the host and
placed. Every batch is split over the data axis, across hosts; every host gets
the same report and process 0 writes it.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import gin
import jax

from hyper_tasks import entry
from hyper_tasks.data import pipeline
from hyper_tasks.evaluation import evaluator
from hyper_tasks.evaluation import report as report_lib
from hyper_tasks.train import checkpoint_formats
from hyper_tasks.train import checkpoints
from hyper_tasks.train import initial_restore
from hyper_tasks.train import partitioning
from hyper_tasks.train import preflight
from hyper_tasks.train import train_config
from hyper_tasks.train import train_state
from hyper_tasks.train import trainer

# Registered once, under this module's name, even when run as ``python -m``.
_configurable = (gin.configurable(module="hyper_tasks.eval")
                 if __name__ != "__main__" else (lambda fn: fn))


def _boxed_params(model, sequence_lengths: Mapping[str, int]) -> Any:
  """The model's parameter shapes with their logical axes (no allocation)."""
  shapes = train_state.init_input_shapes(sequence_lengths)
  return jax.eval_shape(lambda k: model.get_initial_variables(k, shapes)["params"],
                        jax.random.PRNGKey(0))


def abstract_params(model, sequence_lengths: Mapping[str, int]) -> Any:
  """The model's parameter shapes (no allocation)."""
  return train_state.unbox(_boxed_params(model, sequence_lengths))


def checkpoint_steps_to_load(model_dir: str, checkpoint_path: Optional[str],
                             checkpoint_step: Union[None, int, str]
                             ) -> list[tuple[str, Optional[int]]]:
  """``[(path, step)]`` to evaluate: ``checkpoint_step`` None (latest), an int, or
  ``"all"`` (every checkpoint in ``MODEL_DIR``)."""
  if checkpoint_path:
    step = None if checkpoint_step in (None, "all") else int(checkpoint_step)
    return [(checkpoint_path, step)]
  with checkpoints.Checkpointer(model_dir, async_save=False) as ckpt:
    steps = ckpt.all_steps()
  if not steps:
    raise FileNotFoundError(f"No checkpoint in {model_dir}/checkpoints; set "
                            "checkpoint_path to evaluate another checkpoint.")
  if checkpoint_step == "all":
    return [(model_dir, s) for s in steps]
  if checkpoint_step is None:
    return [(model_dir, steps[-1])]
  if int(checkpoint_step) not in steps:
    raise FileNotFoundError(f"No checkpoint for step {checkpoint_step} in "
                            f"{model_dir}/checkpoints; have {steps}.")
  return [(model_dir, int(checkpoint_step))]


def param_placement(model, sequence_lengths: Mapping[str, int],
                    parallelism: Optional[train_config.Parallelism] = None):
  """``(mesh, parameter shardings)`` as training places them (``parallelism``;
  default: the gin-configured ``train.Parallelism()``)."""
  parallelism = train_config.Parallelism() if parallelism is None else parallelism
  mesh, rules = partitioning.mesh_and_rules(parallelism)
  return mesh, partitioning.params_shardings(_boxed_params(model, sequence_lengths),
                                             mesh, rules)


def load_model_params(model, path: str, step: Optional[int],
                      sequence_lengths: Mapping[str, int], fmt: str = "auto",
                      assignment_map=(), shardings: Any = None
                      ) -> tuple[Any, int]:
  """``(params, step)`` of ``model`` from any checkpoint format.

  With ``shardings`` (``param_placement``) the parameters come back placed:
  our checkpoints (no ``assignment_map``) are read straight onto the shards;
  HF tensors are read one at a time and placed as read; t5x ones are read on
  the host, then placed.
  """
  abstract = abstract_params(model, sequence_lengths)
  if (shardings is not None and not assignment_map
      and checkpoint_formats.resolve_format(path, fmt) == "ours"):
    ckpt, ckpt_step = checkpoint_formats.our_checkpointer(path, step)
    with ckpt:
      if ckpt_step is not None:
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract, shardings)
        try:
          return ckpt.restore_params(ckpt_step, target), int(ckpt_step)
        except checkpoints.CheckpointMismatchError as e:
          logging.info("Not restoring %s straight onto the mesh (%s); reading it "
                       "on the host.", path, e)
  params, ckpt_step = initial_restore.load_params(path, abstract, fmt, step,
                                                  assignment_map, shardings)
  return params, int(step if step is not None else (ckpt_step or 0))


@_configurable
def evaluate(*, model, model_dir: str,
             mixture_or_task_names: Union[str, Sequence[str]],
             sequence_lengths: Mapping[str, int], split: str = "test",
             batch_size: int = 32, checkpoint_path: Optional[str] = None,
             checkpoint_step: Union[None, int, str] = None,
             checkpoint_format: str = "auto", assignment_map=(),
             max_examples: Optional[int] = None,
             evaluate_kwargs: Optional[Mapping[str, Any]] = None,
             progress: bool = True, check: Any = None,
             parallelism: Optional[train_config.Parallelism] = None
             ) -> list[dict]:
  """Evaluates checkpoint(s) and writes their reports; returns the reports.

  Args:
    model: an ``EncoderDecoderModel``.
    model_dir: ``MODEL_DIR`` (checkpoints to evaluate, and where reports go).
    mixture_or_task_names: seqio task(s)/mixture(s) (one report over all).
    sequence_lengths: ``{"hyper_inputs", "inputs", "targets"}``.
    split, batch_size, max_examples: evaluation data.
    checkpoint_path: evaluate this checkpoint (HF dir, t5x, or ours) instead of
      ``MODEL_DIR``'s.
    checkpoint_step: None (latest), a step, or ``"all"``.
    checkpoint_format, assignment_map: see ``InitialRestore``.
    evaluate_kwargs: further ``EvalOptions`` fields (``decode_method``,
      ``controls``, ...).
    progress: progress bars.
    check: a ``preflight.CheckOptions`` (``--check``): check the data, lengths
      and checkpoint trees without evaluating; returns ``[CheckReport]``.
    parallelism: mesh and parameter placement; default the gin-configured
      ``train.Parallelism()`` (as the run trained). ``batch_size`` must divide
      by its data-parallel size.
  """
  names = ([mixture_or_task_names] if isinstance(mixture_or_task_names, str)
           else list(mixture_or_task_names))
  pipeline.check_vocabulary(names, model.config.vocab_size, where="eval")
  if check is not None:
    return [preflight.eval_report(
        kind="eval", model=model, names=names, split=split,
        sequence_lengths=sequence_lengths, batch_size=batch_size,
        checkpoints_to_load=checkpoint_steps_to_load(model_dir, checkpoint_path,
                                                     checkpoint_step),
        abstract_params=abstract_params(model, sequence_lengths),
        checkpoint_format=checkpoint_format, assignment_map=assignment_map)]
  model_dir = trainer.check_model_dir(model_dir)
  partitioning.maybe_initialize_distributed()
  mesh, shardings = param_placement(model, sequence_lengths, parallelism)
  options = evaluator.EvalOptions(
      split=split, sequence_lengths=dict(sequence_lengths),
      batch_size=batch_size, max_examples=max_examples,
      config_str=gin.config_str(), progress=progress and jax.process_index() == 0,
      mesh=mesh, **dict(evaluate_kwargs or {}))
  reports = []
  for path, step in checkpoint_steps_to_load(model_dir, checkpoint_path,
                                             checkpoint_step):
    params, step = load_model_params(model, path, step, sequence_lengths,
                                     checkpoint_format, assignment_map, shardings)
    rep = evaluator.evaluate_many(model, params, names, options, step=step,
                                  checkpoint=f"{path}@{step}")
    if jax.process_index() == 0:
      out = report_lib.write_report(model_dir, rep)
      report_lib.write_scalars(os.path.join(model_dir, "eval"), step,
                               report_lib.flatten_metrics(rep))
      logging.info("Evaluated step %d: %s", step, out)
      print(f"eval report: {out}", flush=True)
    reports.append(rep)
  return reports


def main(argv: Optional[Sequence[str]] = None) -> int:
  return entry.run_gin_main(argv, "hyper_tasks.eval", "evaluate",
                            description="Evaluate checkpoints of a hyper-tasks "
                            "model.")


if __name__ == "__main__":
  entry.run_as_script("hyper_tasks.eval")
