"""Evaluation: metrics, rank classification, robustness controls and reports.

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
