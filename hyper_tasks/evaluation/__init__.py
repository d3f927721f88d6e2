"""Evaluation: metrics, rank classification, robustness controls and reports.

The evaluation of a model over seqio tasks (JAX):

- `evaluator`: `evaluate`, `evaluate_many`, `evaluate_examples`, `infer`,
  each taking one frozen `options.EvalOptions`.
- `records`: what an evaluation reads (loading, capping, validation, controls).
- `runner`: the jitted score / predict / encode functions over fixed-size
  batches (`batching`), with the adaptation cache of `hyper_tasks.models.cache`.
- `diagnostics`: is a generated adaptation more than a no-op (the CLI is
  `hyper_tasks.diagnose`); `mixed_batches`: tasks mixed within a batch.

The model-independent half lives in pure Python/numpy modules that import no
JAX, so they can be used from a notebook or a CPU-only analysis job:

- `metrics`: Super-NaturalInstructions ROUGE-L / exact match (official
  protocol).
- `rank_classification`: T0-style rank classification from per-choice scores.
- `controls`: instruction-rewriting robustness controls (shuffled, random,
  empty).
- `report`: JSON evaluation reports under `MODEL_DIR/eval_results/` and their
  flattening into TensorBoard scalar names.
- `tensorboard`: a TensorFlow-free TensorBoard event-file writer, shared with
  the trainer.

Import the submodules directly; this package `__init__` deliberately imports
nothing so that `import hyper_tasks.evaluation` stays cheap.
"""
