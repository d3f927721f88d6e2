"""Ablation sweeps over gin macros: run a grid, then collect the evaluation reports.

    python -m hyper_tasks.sweep --gin_file=experiments/hint_finetune_sni.gin \\
        --gin_file=tiny.gin --grid 'ADAPTER_SIZE=[8,64]' \\
        --grid 'NUM_PREFIX_TOKENS=[0,30]' --sweep_dir=/path/to/sweep

Every point of the grid is one training run, ``python -m hyper_tasks.train`` with the
sweep's gin files and bindings plus one ``--gin.MACRO=value`` per grid axis, written to
``<sweep_dir>/<run name>`` (its ``MODEL_DIR``). Runs go one after another on this
machine, or, with ``--print_only``, the commands are printed for a cluster scheduler.
``--collect_only`` skips running. Collection reads each run's newest report in
``MODEL_DIR/eval_results/`` and writes ``results.md`` and ``results.csv`` in the sweep
directory (one row per run: the grid values, the resolved parameter values that vary
between the runs, then the metrics), plus TensorBoard hparams under
``<sweep_dir>/hparams/<run name>`` so the HParams dashboard compares the runs.

Before anything runs (or is printed, or collected) the sweep resolves the gin
configuration of every point in this process, without training
(:func:`resolve_grid`): a macro nothing reads is an error naming it
(``hyper_tasks.gin_macros``), and so are an axis whose values change no configurable
parameter and two points that resolve to the same configuration
(:func:`check_points_differ`), so a sweep cannot silently measure nothing.
``--print_only`` shows, per point, the resolved values that differ from the sweep's
base configuration (its files and bindings without the grid).

Seeds. ``--seeds 0,1,2`` runs every grid point once per seed, in
``<sweep_dir>/<run name>,seed=<s>``, with ``--gin.train.seed=<s>`` (initialisation,
dropout) and ``--gin.train.data_seed=<s>`` (data order); the grid checks above apply
to the points without the seed (replicas of a point differing only by seed are not
duplicates). ``results.md`` / ``results.csv`` then hold one row per grid point: every
numeric metric is the mean over the seeds that have a report, ``<metric>_std`` its
sample standard deviation (0 for one seed), ``seeds`` the seeds collected;
``results_per_seed.csv`` keeps one row per run.

The design keeps the sweep a thin layer over the train entry point: a run of a sweep
is exactly the command a user would type, so a failing point can be re-run by hand.


Modules: :mod:`~hyper_tasks.sweep.grid` (axes, points, seeds, gin resolution and its
checks), :mod:`~hyper_tasks.sweep.results` (collection and tables),
:mod:`~hyper_tasks.sweep.runner` (commands, running, ``main``).
"""
from hyper_tasks.sweep.grid import (SEED_PARAMETERS, Resolution, SweepError,
                                    check_points_differ, gin_literal,
                                    grid_points, is_gin_literal, parse_grid,
                                    parse_seeds, resolve_grid, run_name,
                                    seed_run_name)
from hyper_tasks.sweep.results import (aggregate_seeds, collect, headline,
                                       to_csv, to_markdown, write_results)
from hyper_tasks.sweep.runner import (TINY_EXAMPLE_ARGS, main, run_grid,
                                      train_command)

__all__ = ["SEED_PARAMETERS", "Resolution", "SweepError", "TINY_EXAMPLE_ARGS",
           "aggregate_seeds", "check_points_differ", "collect", "gin_literal",
           "grid_points", "headline", "is_gin_literal", "main", "parse_grid",
           "parse_seeds", "resolve_grid", "run_grid", "run_name", "seed_run_name",
           "to_csv", "to_markdown", "train_command", "write_results"]
