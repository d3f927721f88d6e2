"""Preflight (``--check``): a real configuration checked in seconds, nothing trained.

Every entry point (``python -m hyper_tasks.train|eval|infer --check``, and
``scripts/*.sh --check``) resolves the full configuration as given (no
``tiny.gin``), then, instead of training or evaluating:

1. registers the data from the configured directories and reads and tokenizes one
   real batch (train) or a few real examples (eval, infer);
2. checks the data vocabulary against the model's embedding
   (``vocab.check_fits``) and the sequence lengths against the model
   (:func:`check_lengths`);
3. builds the model and the train state abstractly (``jax.eval_shape``: no
   parameter is allocated) and places them on the configured mesh, which must fit
   the device count and divide the batch;
4. checks the restore plan against the checkpoint's tree, read from its metadata
   (safetensors headers, orbax metadata, t5x specs) without loading weights:
   resuming from ``MODEL_DIR``, or the ``InitialRestore`` (missing keys, shape
   mismatches, optimizer groups), exactly as the real restore would decide;
5. lowers the train step for the mesh (train; ``--compile`` also compiles it and
   reports XLA's memory analysis).

It prints parameters per optimizer group, tokens per batch, analytic FLOPs per
step, and the per-device bytes of parameters and optimizer state. A wrong
configuration fails here with the key named, not hours into a run. To check a
configuration for more devices than this machine has, ``--check_devices=N`` fakes
``N`` CPU devices (set before JAX starts).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import jax
import numpy as np

from hyper_tasks.data import pipeline
from hyper_tasks.train import checkpoint_formats
from hyper_tasks.train import checkpoints
from hyper_tasks.train import initial_restore as init_restore_lib
from hyper_tasks.train import opt_state_restore
from hyper_tasks.train import param_restore
from hyper_tasks.train import summaries as summaries_lib
from hyper_tasks import tree_utils

LENGTH_KEYS = ("hyper_inputs", "inputs", "targets")
# A hypernetwork reading fewer instruction tokens than this reads no instruction.
MIN_INSTRUCTION_LENGTH = 8


class CheckError(ValueError):
  """A configuration that would fail (or silently misbehave) in a real run."""


@dataclasses.dataclass(frozen=True)
class CheckOptions:
  """What ``--check`` does beyond the default checks.

  Attributes:
    compile: also compile the train step and report its memory analysis.
  """
  compile: bool = False


@dataclasses.dataclass
class CheckReport:
  """What a check found (printed by :meth:`format`, JSON by :meth:`to_json`)."""
  kind: str
  lines: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
  values: dict[str, Any] = dataclasses.field(default_factory=dict)
  # The abstract train state (train checks), for callers that build on it.
  layout: Any = dataclasses.field(default=None, repr=False)

  def add(self, label: str, value: Any, key: Optional[str] = None) -> None:
    self.lines.append((label, value))
    if key:
      self.values[key] = value

  def format(self) -> str:
    width = max((len(label) for label, _ in self.lines), default=0)
    return "\n".join([f"check ({self.kind}): OK"] +
                     [f"  {label:<{width}}  {value}" for label, value in self.lines])

  def to_json(self) -> str:
    return json.dumps(self.values, indent=1, default=str)


def _bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  return str(n)


def verify_devices(wanted: Optional[int]) -> None:
  """``--check_devices=N`` took effect (JAX had not started before it was set)."""
  if wanted and jax.device_count() != wanted:
    raise CheckError(f"--check_devices={wanted}: JAX runs with {jax.device_count()} "
                     "devices (it started before the flag was applied; run the "
                     "check as a fresh process).")


def print_failure(error: BaseException) -> int:
  """``--check`` failed: the reason on stderr (no traceback); exit status 1."""
  logging.debug("check failed", exc_info=error)
  print(f"check FAILED: {type(error).__name__}: {error}", file=sys.stderr,
        flush=True)
  return 1


# ----------------------------------------------------------------------------------
# Lengths.
# ----------------------------------------------------------------------------------


def check_lengths(sequence_lengths: Mapping[str, Any], model: Any,
                  where: str = "TASK_FEATURE_LENGTHS") -> None:
  """Sequence lengths the model can run.

  Every key of ``LENGTH_KEYS`` is a positive integer; none exceeds the model's
  ``config.max_sequence_length`` (when set, e.g. ``models.make_model.
  config_overrides = {'max_sequence_length': 512}``: T5's relative positions
  impose no limit of their own); a model that reads an
  instruction gets at least ``MIN_INSTRUCTION_LENGTH`` instruction tokens.

  Raises:
    CheckError: naming the key, its value and the limit.
  """
  missing = [k for k in LENGTH_KEYS if k not in sequence_lengths]
  if missing:
    raise CheckError(f"{where}: missing {missing} (have "
                     f"{sorted(sequence_lengths)}).")
  for key in LENGTH_KEYS:
    value = sequence_lengths[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise CheckError(f"{where}[{key!r}] = {value!r}: must be a positive integer.")
  limit = getattr(model.config, "max_sequence_length", None)
  if limit:
    for key in LENGTH_KEYS:
      if key == "hyper_inputs" and not model.uses_instruction:
        continue
      if sequence_lengths[key] > limit:
        raise CheckError(
            f"{where}[{key!r}] = {sequence_lengths[key]} is longer than the model "
            f"allows (max_sequence_length = {limit}).")
  if model.uses_instruction and sequence_lengths["hyper_inputs"] < MIN_INSTRUCTION_LENGTH:
    raise CheckError(
        f"{where}['hyper_inputs'] = {sequence_lengths['hyper_inputs']}: the model's "
        f"hypernetwork would read (almost) no instruction; use at least "
        f"{MIN_INSTRUCTION_LENGTH} (HINT: 1024).")


# ----------------------------------------------------------------------------------
# Checkpoint trees from metadata.
# ----------------------------------------------------------------------------------


def _zeros(shape: Sequence[int], dtype=np.float32) -> np.ndarray:
  """A read-only array of ``shape`` that takes no memory (restore planning)."""
  return np.broadcast_to(np.zeros((), dtype), tuple(shape))


def plan_initial_restore(cfg: Any, optimizer: Any, abstract_params: Any
                         ) -> tuple[param_restore.RestoreReport, list[str]]:
  """What ``InitialRestore`` ``cfg`` would do, decided from metadata alone.

  Raises:
    param_restore.RestoreError: missing keys, shape mismatches or absent optimizer
      groups, as the real restore would (it runs the same ``restore_params``).
  """
  ckpt = checkpoint_formats.read_shapes(cfg.path, cfg.format, cfg.step)
  notes = [f"initial restore: {ckpt.format} checkpoint {cfg.path}"]
  target = tree_utils.leaves_by_path(abstract_params)
  init = {k: _zeros(v.shape, v.dtype) for k, v in target.items()}
  _, report = cfg.restore_params(
      target, {k: _zeros(v) for k, v in ckpt.params.items()}, init)
  groups = init_restore_lib.groups_to_restore(cfg, optimizer)
  opt_state_restore.check_groups_present(
      groups, ckpt.opt_groups,
      f"{cfg.path} (optimizer_state={cfg.optimizer_state!r}): the checkpoint's")
  if groups and not ckpt.has_opt_state:
    notes.append(f"optimizer groups {groups}: fresh ({ckpt.format.upper()} "
                 "checkpoints hold none)")
  elif groups:
    notes.append(f"optimizer groups {groups}: from the {ckpt.format} checkpoint")
  return report, notes


def check_resume(model_dir: str, abstract_state: Any) -> Optional[int]:
  """The step ``MODEL_DIR`` would resume from (None: a new run), after checking the
  saved tree matches the state (``CheckpointMismatchError`` names the keys)."""
  if not os.path.isdir(os.path.join(model_dir, checkpoints.CHECKPOINTS_SUBDIR)):
    return None
  ckpt = checkpoints.Checkpointer(model_dir, async_save=False)
  with ckpt:
    step = ckpt.latest_step()
    if step is None:
      return None
    checkpoints.check_matches(ckpt.saved_tree(step), abstract_state)
  return step


# ----------------------------------------------------------------------------------
# Sizes.
# ----------------------------------------------------------------------------------


def per_device_bytes(abstract: Any, shardings: Any) -> int:
  """Bytes one device holds of ``abstract`` placed with ``shardings``."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    shape = sharding.shard_shape(leaf.shape) if leaf.shape else ()
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def params_per_group(abstract_params: Any, path_group: Mapping[str, str]
                     ) -> dict[str, int]:
  out: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params):
    group = path_group.get(tree_utils.path_str(path), "?")
    out[group] = out.get(group, 0) + math.prod(leaf.shape)
  return out


def memory_analysis(compiled: Any) -> dict[str, int]:
  """XLA's per-device memory analysis of a compiled step (bytes)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  names = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
           "alias_size_in_bytes", "generated_code_size_in_bytes")
  return {n: int(getattr(stats, n)) for n in names if hasattr(stats, n)}


def abstract_batch(batch: Mapping[str, Any], num_processes: int = 1) -> dict:
  """Global-batch ``ShapeDtypeStruct``s of one process's numpy batch."""
  return {k: jax.ShapeDtypeStruct((v.shape[0] * num_processes,) + v.shape[1:],
                                  v.dtype) for k, v in batch.items()}


def tokens_per_batch(batch_shapes: Mapping[str, Any]) -> dict[str, int]:
  out = {}
  for key, name in (("hyper_encoder_input_tokens", "instruction"),
                    ("encoder_input_tokens", "input"),
                    ("decoder_target_tokens", "target")):
    if key in batch_shapes:
      out[name] = math.prod(batch_shapes[key].shape)
  return out


def train_report(*, model, optimizer, fns, mesh, sequence_lengths, batch_size,
                 batch: Mapping[str, Any], initial_restore, model_dir: str,
                 options: CheckOptions, mixture_or_task_name: str,
                 num_microbatches: int) -> CheckReport:
  """The train entry point's check, once the trainer resolved everything."""
  report = CheckReport("train")
  layout = fns.layout
  report.add("data", f"{mixture_or_task_name}: one batch of {batch_size} read, "
             "tokenized", "mixture_or_task_name")
  report.add("sequence lengths", dict(sequence_lengths), "sequence_lengths")
  report.add("mesh", dict(mesh.shape), "mesh")
  resumed = check_resume(model_dir, layout.abstract)
  if resumed is not None:
    report.add("restore", f"resume {model_dir} at step {resumed} (tree matches)",
               "resume_step")
  elif initial_restore is not None:
    plan, notes = plan_initial_restore(initial_restore, optimizer,
                                       layout.abstract.params)
    report.add("restore", "; ".join(notes + [
        f"{len(plan.loaded)} loaded, {len(plan.reinitialised)} initialised, "
        f"{len(plan.unused)} unused checkpoint keys"]))
    report.values["restore"] = {"loaded": len(plan.loaded),
                                "reinitialised": len(plan.reinitialised),
                                "unused": len(plan.unused)}
  else:
    report.add("restore", "none (from scratch)")
  groups = params_per_group(layout.abstract.params, fns.path_group)
  report.add("parameters", ", ".join(f"{g} {n / 1e6:.2f}M" for g, n in
                                     sorted(groups.items())) +
             f" (total {sum(groups.values()) / 1e6:.2f}M)", "params_per_group")
  report.values["params_per_group"] = groups
  shapes = abstract_batch(batch, jax.process_count())
  tokens = tokens_per_batch(shapes)
  report.add("tokens per batch", ", ".join(f"{k} {v}" for k, v in tokens.items()))
  report.values["tokens_per_batch"] = tokens
  param_bytes = per_device_bytes(layout.abstract.params, layout.shardings.params)
  opt_bytes = per_device_bytes(layout.abstract.opt_state, layout.shardings.opt_state)
  report.add("per-device state",
             f"parameters {_bytes(param_bytes)} + optimizer {_bytes(opt_bytes)} = "
             f"{_bytes(param_bytes + opt_bytes)}")
  report.values.update(param_bytes_per_device=param_bytes,
                       opt_bytes_per_device=opt_bytes)
  start = time.perf_counter()
  lowered = fns.step.lower(layout.abstract, shapes)
  lower_s = time.perf_counter() - start
  flops = summaries_lib.step_flops(lowered, model,
                                   {k: v.shape for k, v in shapes.items()})
  report.add("FLOPs per step", f"{flops:.3e} (model FLOPs, analytic)")
  report.values["flops_per_step"] = flops
  report.add("train step", f"lowered in {lower_s:.1f} s "
             f"({num_microbatches} microbatch(es))")
  if options.compile:
    start = time.perf_counter()
    compiled = lowered.compile()
    mem = memory_analysis(compiled)
    report.add("compiled", f"in {time.perf_counter() - start:.1f} s; per device: " +
               ", ".join(f"{k.replace('_size_in_bytes', '')} {_bytes(v)}"
                         for k, v in mem.items()))
    report.values["memory_analysis"] = mem
  report.layout = layout
  return report


def plan_params_restore(path: str, abstract_params: Any, fmt: str = "auto",
                        step: Optional[int] = None, assignment_map=()
                        ) -> param_restore.RestoreReport:
  """What evaluation's ``load_params`` would do (every key from the checkpoint),
  decided from metadata alone; raises ``RestoreError`` naming keys and shapes."""
  shapes = checkpoint_formats.read_shapes(path, fmt, step).params
  target = tree_utils.leaves_by_path(abstract_params)
  _, report = param_restore.restore_params(
      target, {k: _zeros(v) for k, v in shapes.items()}, assignment_map)
  return report


def eval_report(*, kind: str, model, names: Sequence[str], split: str,
                sequence_lengths: Mapping[str, int], batch_size: int,
                checkpoints_to_load: Sequence[tuple[str, Optional[int]]],
                abstract_params: Any, checkpoint_format: str = "auto",
                assignment_map=()) -> CheckReport:
  """The eval / infer entry points' check: data, lengths, checkpoint trees."""
  report = CheckReport(kind)
  check_lengths(sequence_lengths, model)
  for name in names:
    batch = next(iter(pipeline.get_dataset(
        name, split, sequence_lengths, batch_size, shuffle=False, num_epochs=1,
        drop_remainder=False)))
    rows = int(next(iter(batch.values())).shape[0])
    report.add(f"data {name}[{split}]", f"{rows} example(s) read, tokenized")
  report.add("sequence lengths", dict(sequence_lengths), "sequence_lengths")
  for path, step in checkpoints_to_load:
    plan = plan_params_restore(path, abstract_params, checkpoint_format, step,
                               assignment_map)
    report.add(f"checkpoint {path}@{step if step is not None else 'latest'}",
               f"{len(plan.loaded)} parameters match ({len(plan.unused)} unused "
               "checkpoint keys)")
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params))
  nbytes = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(abstract_params))
  report.add("parameters", f"{total / 1e6:.2f}M ({_bytes(nbytes)})", "num_params")
  report.values["num_params"] = total
  return report
