"""Training: the loop, its configuration, optimizers, restore and checkpoints.

* ``trainer`` (``train()``), ``train_config`` (its setting groups), ``step_fn``,
  ``train_state``, ``partitioning``, ``summaries``, ``train_eval``, ``preflight``
  (``--check``), ``__main__`` (``python -m hyper_tasks.train``);
* optimizers: ``adafactor`` (the t5x update rule, schedules), ``param_groups``
  (regex groups, grouped state), ``optimizers`` (the grouped optimizers, gin's
  ``adafactor_dual`` & co.);
* checkpoints: ``checkpoints`` (our orbax checkpoints: save, resume, preemption),
  ``checkpoint_formats`` (reading HF / t5x / our checkpoints, dispatched once),
  ``param_restore`` (parameters from a checkpoint: renames, fallbacks, report),
  ``opt_state_restore`` (optimizer statistics: one filler, a lookup per format),
  ``initial_restore`` (where a new run starts from, composing the three).

Submodules are imported explicitly (``from hyper_tasks.train import optimizers``);
nothing heavy is imported here.
"""
