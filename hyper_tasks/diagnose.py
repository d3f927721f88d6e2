"""``hyper-tasks diagnose``: adapter diagnostics of a run's checkpoint.

The entry-point half of :mod:`hyper_tasks.evaluation.diagnostics` (which holds
the analysis): the model from ``MODEL_DIR/config.gin`` or ``--gin_file`` flags,
the parameters from a checkpoint (refused, naming it, when it holds no
hypernetwork), the JSON report to ``MODEL_DIR/diagnostics/step_<N>.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Mapping, Optional, Sequence

import gin

from hyper_tasks import eval as eval_lib
from hyper_tasks import gin_utils
from hyper_tasks.data import register
from hyper_tasks.evaluation import diagnostics
from hyper_tasks.train import checkpoint_formats
from hyper_tasks.train import initial_restore

_CONFIGURED = "hyper_tasks.diagnose.configured"


@gin.configurable(module="hyper_tasks.diagnose")
def configured(model=None, sequence_lengths=None):
  """The experiment's model and ``TASK_FEATURE_LENGTHS`` (bound by :func:`main`)."""
  return model, sequence_lengths


def load_checkpoint(model, path: str, step: Optional[int],
                    sequence_lengths: Mapping[str, int]) -> tuple[Any, int]:
  """``(params, step)``; a checkpoint without ``hypernet/`` parameters is a
  ``DiagnosticsError`` naming it (before any restore)."""
  if not model.uses_instruction:
    raise diagnostics.DiagnosticsError(
        f"{path}: the configured model has no hypernetwork (hypernet 'none': a "
        "plain T5, concatenated-instruction or static-PEFT model); diagnose needs "
        "a HINT-style model. Pass the experiment's --gin_file if config.gin is "
        "not the one the checkpoint was trained with.")
  ckpt = checkpoint_formats.read_checkpoint(path, "auto", step)
  flat_ckpt, ckpt_step = ckpt.params, ckpt.step
  if not any(k.startswith("hypernet/") for k in flat_ckpt):
    raise diagnostics.DiagnosticsError(
        f"checkpoint {path} (step {ckpt_step}) has no hypernetwork: none of its "
        f"{len(flat_ckpt)} parameters is under 'hypernet/'. diagnose needs a "
        "checkpoint of a model with a hypernetwork (HINT, Hypter, ...).")
  params = initial_restore.params_from_checkpoint(
      ckpt, eval_lib.abstract_params(model, sequence_lengths))
  return params, int(step if step is not None else (ckpt_step or 0))


def main(argv: Optional[Sequence[str]] = None) -> int:
  """``hyper-tasks diagnose --model_dir=DIR --tasks=T1,T2 [...]``.

  The model comes from ``DIR/config.gin`` (the run's operative config) or from
  ``--gin_file`` experiment flags (and ``--gin.NAME=value``), as for eval; the
  parameters from the newest (or ``--checkpoint_step``) checkpoint in ``DIR``.
  Writes ``DIR/diagnostics/step_<N>.json`` (or ``--output``) and prints a summary.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  dotted, rest = gin_utils.split_gin_args(argv)
  parser = argparse.ArgumentParser(
      prog="hyper-tasks diagnose",
      description="Adapter diagnostics of a checkpoint: KL from the plain "
      "backbone, generated-parameter norms, own-vs-control instruction score "
      "gaps, cross-task cosine similarities (JSON).")
  gin_utils.add_gin_flags(parser)
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--tasks", required=True,
                      help="comma-separated seqio tasks or mixtures")
  parser.add_argument("--checkpoint_step", type=int, default=None)
  parser.add_argument("--split", default="test")
  parser.add_argument("--examples_per_task", "-k", type=int, default=8)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--controls",
                      default=",".join(diagnostics.DEFAULT_CONTROLS))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default=None,
                      help="JSON path (default MODEL_DIR/diagnostics/step_<N>.json)")
  ns = parser.parse_args(rest)
  files = list(ns.gin_file)
  if not files:
    files = [os.path.join(ns.model_dir, gin_utils.CONFIG_FILE)]
    if not os.path.exists(files[0]):
      print(f"diagnose: {files[0]} does not exist; pass the experiment's "
            "--gin_file flags.", file=sys.stderr)
      return 2
  paths = [p for group in ns.gin_search_paths for p in group.split(",") if p]
  bindings = list(ns.gin_bindings) + dotted + [
      f"MODEL_DIR = {ns.model_dir!r}", f"{_CONFIGURED}.model = %MODEL",
      f"{_CONFIGURED}.sequence_lengths = %TASK_FEATURE_LENGTHS"]
  try:
    gin_utils.parse(files, bindings, paths, finalize=False)
    register.register_all()
    model, lengths = configured()
    params, step = load_checkpoint(model, ns.model_dir, ns.checkpoint_step,
                                   lengths)
    result = diagnostics.diagnose(
        model, params, [t for t in ns.tasks.split(",") if t],
        sequence_lengths=lengths, split=ns.split,
        examples_per_task=ns.examples_per_task, batch_size=ns.batch_size,
        seed=ns.seed, controls=[c for c in ns.controls.split(",") if c])
  except (diagnostics.DiagnosticsError, gin_utils.GinConfigError,
          FileNotFoundError) as e:
    print(f"diagnose: {e}", file=sys.stderr)
    return 2
  result["checkpoint"] = f"{ns.model_dir}@{step}"
  out = ns.output or os.path.join(ns.model_dir, "diagnostics",
                                  f"step_{step}.json")
  diagnostics.write_json(result, out)
  print(diagnostics.summary(result))
  print(f"diagnostics: {out}", flush=True)
  return 0
