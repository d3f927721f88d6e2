"""Adapter diagnostics: is a generated adaptation more than a no-op?

:func:`diagnose` reports, per task (JSON-ready):

* ``kl``: the KL divergence ``KL(adapted || plain)`` of the adapted model's
  next-token distribution from the plain backbone's (the same backbone
  parameters, no PEFT, no hypernetwork, no instruction fusion), teacher-forced on
  the task's inputs and targets: ``mean`` over the weighted target positions and
  ``max`` over them (nats);
* ``norms``: Frobenius norms of the generated parameters per layer and site
  (``encoder/layers_0/mlp`` ...), averaged over the task's distinct instructions:
  every generated tensor (``adapter_down``, ``prefix_key``, ``ia3_k`` ...) and the
  products that act on the hidden states, ``adapter_delta_w = ||down @ up||`` and
  ``lora_<t>_ba = ||A @ B|| * scale``;
* ``score`` / ``gap``: the mean per-token target log-likelihood with the task's own
  instruction and under the instruction controls of
  :mod:`hyper_tasks.evaluation.controls` (shuffled / random / empty), and
  ``gap[control] = own - control`` (positive: the model uses its instruction);

and across tasks ``cosine_similarity``: the cosine similarity of the tasks'
flattened generated adaptations (each task's mean over its instructions; None where
an adaptation is all zeros).

A hypernetwork with ``output_scale = 0`` and no instruction fusion generates exact
zeros, i.e. a no-op adaptation: KL 0, gaps 0. The CLI, ``hyper-tasks diagnose``
(loading a run's model and checkpoint), is :mod:`hyper_tasks.diagnose`.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyper_tasks.data import features as F
from hyper_tasks.evaluation import batching
from hyper_tasks.evaluation import records as records_lib
from hyper_tasks.evaluation import report as report_lib
from hyper_tasks.evaluation import runner
from hyper_tasks.models import jit_cache
from hyper_tasks.models.cache import AdaptationCache, instruction_key
from hyper_tasks.models.model_api import EncoderDecoderModel
from hyper_tasks.models.transformer import Transformer

DEFAULT_CONTROLS = ("shuffled_instruction", "random_instruction",
                    "empty_instruction")


class DiagnosticsError(ValueError):
  """Input ``diagnose`` cannot work with (the message names it)."""


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def plain_backbone(model):
  """``(EncoderDecoderModel, params filter)`` of the model's bare backbone."""
  plain = EncoderDecoderModel(Transformer(model.config))
  def backbone(params):
    return {k: v for k, v in params.items() if k not in ("hypernet", "peft")}
  return plain, backbone


def _kl_fn(model):
  """Jitted ``(params, backbone params, batch, adaptation) -> (kl sum, kl max,
  target log-likelihood sum, tokens)`` per row (``models.jit_cache``)."""
  def build():
    plain, _ = plain_backbone(model)

    def kl_and_score(params, backbone_params, batch, adaptation):
      logits = model._logits(params, batch, adaptation)  # pylint: disable=protected-access
      base = plain._logits(backbone_params,  # pylint: disable=protected-access
                           {k: v for k, v in batch.items()
                            if k != F.HYPER_ENCODER_INPUT_TOKENS})
      logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
      logq = jax.nn.log_softmax(base.astype(jnp.float32), -1)
      kl = jnp.sum(jnp.exp(logp) * (logp - logq), -1)  # [B, Lt]
      w = batch[F.DECODER_LOSS_WEIGHTS].astype(jnp.float32)
      ll = jnp.take_along_axis(
          logp, batch[F.DECODER_TARGET_TOKENS][..., None], -1)[..., 0]
      return (jnp.sum(kl * w, -1), jnp.max(jnp.where(w > 0, kl, 0.0), -1),
              jnp.sum(ll * w, -1), jnp.sum(w, -1))

    return jax.jit(kl_and_score)
  return jit_cache.get(model, "diagnostics_kl", build)


# -- norms and similarities ---------------------------------------------------------


def _flat(tree: Mapping[str, Any], prefix=()) -> dict[tuple, np.ndarray]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, prefix + (k,)))
    elif v is not None:
      out[prefix + (k,)] = np.asarray(v, np.float64)
  return out


def adaptation_norms(params: Mapping[str, Any], peft_spec=None
                     ) -> dict[str, dict[str, float]]:
  """``{"<stack>/layers_<i>/<module>": {name: norm}}`` of one per-task (unbatched)
  generated parameter tree (see the module docstring for the names)."""
  out: dict[str, dict[str, float]] = {}
  flat = _flat(params)
  for path, value in flat.items():
    site = "/".join(path[:-1])
    out.setdefault(site, {})[path[-1]] = float(np.linalg.norm(value))
  for path, value in flat.items():
    site, name = path[:-1], path[-1]
    if name == "adapter_down" and site + ("adapter_up",) in flat:
      out["/".join(site)]["adapter_delta_w"] = float(np.linalg.norm(
          value @ flat[site + ("adapter_up",)]))
    if name.startswith("lora_") and name.endswith("_a"):
      b = flat.get(site + (name[:-2] + "_b",))
      if b is not None:
        scale = peft_spec.lora_scale(name) if peft_spec is not None else 1.0
        out["/".join(site)][name[:-2] + "_ba"] = float(
            np.linalg.norm(value @ b) * scale)
  return dict(sorted(out.items()))


def _vector(params: Mapping[str, Any]) -> np.ndarray:
  flat = _flat(params)
  return np.concatenate([flat[k].reshape(-1) for k in sorted(flat)]
                        ) if flat else np.zeros(0)


def cosine_matrix(vectors: Sequence[np.ndarray]) -> list[list[Optional[float]]]:
  """Pairwise cosine similarities; None where a vector is all zeros."""
  norms = [float(np.linalg.norm(v)) for v in vectors]
  return [[None if not (na > 0 and nb > 0) else float(np.dot(a, b) / (na * nb))
           for b, nb in zip(vectors, norms)] for a, na in zip(vectors, norms)]


# -- records ------------------------------------------------------------------------


def _task_records(records: Sequence[Mapping[str, Any]],
                  task_names: Optional[Sequence[str]],
                  examples_per_task: int) -> dict[str, list[dict]]:
  """The first ``examples_per_task`` records of each task (correct answer choices
  only for rank-classification rows), with clear errors."""
  by_task: dict[str, list[dict]] = {}
  for r in records:
    if F.IS_CORRECT in r and int(r.get(F.NUM_CHOICES, 1)) > 1 and not int(
        r[F.IS_CORRECT]):
      continue
    by_task.setdefault(_text(r[F.TASK_NAMES]), []).append(dict(r))
  if task_names:
    wanted = [_text(t) for t in task_names]
    missing = [t for t in wanted if t not in by_task]
    if missing:
      raise DiagnosticsError(f"task(s) {missing} have no examples; the records "
                             f"hold tasks {sorted(by_task)}.")
    by_task = {t: by_task[t] for t in wanted}
  if not by_task:
    raise DiagnosticsError("diagnose got no examples.")
  out = {}
  for task, rows in by_task.items():
    if len(rows) < examples_per_task:
      raise DiagnosticsError(
          f"task {task!r} has {len(rows)} example(s); examples_per_task (k) = "
          f"{examples_per_task} is larger. Lower k to at most {len(rows)}.")
    rows = rows[:examples_per_task]
    if all(not _text(r.get(F.HYPER_INPUTS, "")).strip() for r in rows):
      raise DiagnosticsError(
          f"task {task!r} has no instruction: its examples' {F.HYPER_INPUTS!r} "
          "are missing or empty, so there is no adaptation to diagnose.")
    out[task] = rows
  return out


def _load_records(task_names: Sequence[str], split: str, examples_per_task: int,
                  sequence_lengths) -> list[dict]:
  records, _ = records_lib.load(task_names, split, examples_per_task,
                                sequence_lengths)
  return records


# -- the diagnosis ------------------------------------------------------------------


def _run(model, params, backbone_params, cache, encoded, batch_size):
  """Per-row (kl_sum, kl_max, target log-likelihood sum, tokens) over ``encoded``
  (one jitted function for the real instruction and the controls: one compile)."""
  kl_fn = _kl_fn(model)
  return runner.run_in_stream_order(
      lambda batch, adaptation: kl_fn(params, backbone_params, batch,
                                      adaptation),
      encoded.arrays, list(encoded.arrays), cache, batch_size)


def diagnose(model, params, task_names: Optional[Sequence[str]] = None, *,
             records: Optional[Sequence[Mapping[str, Any]]] = None,
             vocabulary=None, sequence_lengths: Optional[Mapping[str, int]] = None,
             split: str = "test", examples_per_task: int = 8, batch_size: int = 8,
             controls: Sequence[str] = DEFAULT_CONTROLS, seed: int = 0
             ) -> dict[str, Any]:
  """Diagnostics of a hypernetwork's generated adaptations (module docstring).

  Args:
    model: an ``EncoderDecoderModel`` with a hypernetwork.
    params: its (unboxed) parameters.
    task_names: seqio tasks/mixtures to read (``split``), or, with ``records``,
      which of their ``task_names`` to diagnose (None: all).
    records: feature records (``hyper_inputs``, ``inputs``, ``targets``,
      ``task_names``) instead of reading ``task_names``.
    vocabulary: tokenizer of ``records`` (default: the first task's).
    sequence_lengths: ``{"hyper_inputs", "inputs", "targets"}``.
    examples_per_task: ``k``, examples read per task (a task with fewer is an
      error naming it).
    batch_size: rows per (jitted, fixed-shape) batch.
    controls: instruction controls for the score gaps (shuffled needs two tasks;
      with one it is skipped).
    seed: the controls' seed.
  Returns:
    ``{"tasks": {task: {...}}, "cosine_similarity": {"tasks", "matrix"},
    "settings": {...}}``.
  Raises:
    DiagnosticsError: a model without a hypernetwork, parameters without
      ``hypernet/``, a task without instructions or with fewer than ``k``
      examples, no examples.
  """
  if not model.uses_instruction:
    raise DiagnosticsError(
        "diagnose needs a model with a hypernetwork; this one has none (a plain "
        "T5, concatenated-instruction or static-PEFT model generates no "
        "adaptation).")
  if "hypernet" not in params:
    raise DiagnosticsError("the parameters have no 'hypernet/' subtree: this "
                           "checkpoint holds no hypernetwork.")
  if examples_per_task < 1:
    raise DiagnosticsError(f"examples_per_task must be >= 1, got "
                           f"{examples_per_task}.")
  if sequence_lengths is None:
    raise DiagnosticsError("diagnose needs sequence_lengths.")
  if records is None:
    if not task_names:
      raise DiagnosticsError("diagnose needs task_names or records.")
    names = [task_names] if isinstance(task_names, str) else list(task_names)
    records = _load_records(names, split, examples_per_task, sequence_lengths)
    if vocabulary is None:
      vocabulary = records_lib.task_vocabulary(names[0])
    task_names = None
  if vocabulary is None:
    raise DiagnosticsError("diagnose with records needs their vocabulary.")
  tasks = _task_records(records, task_names, examples_per_task)
  rows = [r for rs in tasks.values() for r in rs]
  owner = np.asarray([i for i, rs in enumerate(tasks.values()) for _ in rs])
  cache = AdaptationCache(model, params)
  _, backbone = plain_backbone(model)
  backbone_params = backbone(params)
  encoded = {"own": batching.encode_records(rows, vocabulary, sequence_lengths)}
  for control in controls:
    name = records_lib.control_name(control)
    if name == "shuffled_instruction" and len(tasks) < 2:
      logging.warning("diagnose: one task; the shuffled-instruction control "
                      "needs two and is skipped.")
      continue
    rewritten = records_lib.apply_control(rows, name, seed=seed,
                                          rank_classification_tasks=())
    encoded[name] = batching.encode_records(rewritten, vocabulary,
                                            sequence_lengths)
  # Every distinct instruction through the hypernetwork in one call (one compile).
  cache.get(np.concatenate([e.arrays[F.HYPER_ENCODER_INPUT_TOKENS]
                            for e in encoded.values()]))
  scores = {}
  for name, enc in encoded.items():
    out = _run(model, params, backbone_params, cache, enc, batch_size)
    if name == "own":
      kl_sum, kl_max, _, ntok = out
    scores[name] = out[2]
  used_controls = [c for c in encoded if c != "own"]
  encoded = encoded["own"]

  hyper = encoded.arrays[F.HYPER_ENCODER_INPUT_TOKENS]
  report_tasks, vectors = {}, []
  spec = model.module.peft_spec
  for i, task in enumerate(tasks):
    sel = owner == i
    tok = max(float(ntok[sel].sum()), 1.0)
    rows_of = {instruction_key(r): r for r in hyper[sel]}
    instructions = list(rows_of)
    adaptations = [cache.get_task(rows_of[k]).params for k in instructions]
    norms = [adaptation_norms(jax.device_get(a), spec) for a in adaptations]
    mean_norms = {site: {name: float(np.mean([n[site][name] for n in norms]))
                         for name in norms[0][site]} for site in norms[0]}
    vecs = [_vector(jax.device_get(a)) for a in adaptations]
    vectors.append(np.mean(vecs, axis=0))
    score = {k: float(v[sel].sum() / tok) for k, v in scores.items()}
    report_tasks[task] = {
        "num_examples": int(sel.sum()),
        "num_instructions": len(instructions),
        "kl": {"mean": float(kl_sum[sel].sum() / tok),
               "max": float(kl_max[sel].max())},
        "score": score,
        "gap": {c: score["own"] - score[c] for c in used_controls},
        "adaptation_norm": float(np.mean([np.linalg.norm(v) for v in vecs])),
        "norms": mean_norms,
    }
  return {
      "tasks": report_tasks,
      "cosine_similarity": {"tasks": list(tasks),
                            "matrix": cosine_matrix(vectors)},
      "settings": {"examples_per_task": examples_per_task,
                   "controls": used_controls, "seed": seed,
                   "score": "mean per-token target log-likelihood (nats)",
                   "kl": "KL(adapted || plain backbone) per target token (nats)",
                   "sequence_lengths": dict(sequence_lengths)},
  }


def summary(result: Mapping[str, Any]) -> str:
  """A short text table: task, KL, adaptation norm, gaps."""
  lines = []
  for task, r in result["tasks"].items():
    gaps = ", ".join(f"{c.split('_')[0]} {v:+.4f}" for c, v in r["gap"].items())
    lines.append(f"{task}: KL {r['kl']['mean']:.4g}, |adaptation| "
                 f"{r['adaptation_norm']:.4g}, gap {gaps or '-'}")
  return "\n".join(lines)


def _json_safe(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  return x


def write_json(result: Mapping[str, Any], path: str) -> str:
  """Writes ``result`` as JSON (non-finite floats as null), atomically."""
  report_lib.atomic_write_text(path, json.dumps(_json_safe(result), indent=1))
  return path
