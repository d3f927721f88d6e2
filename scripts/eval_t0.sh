#!/usr/bin/env bash
# Evaluate MODEL_DIR's checkpoints on the T0 held-out tasks by rank classification (needs P3_TEMPLATES_DIR, P3_DATA_DIR).
# Usage: MODEL_DIR=... [env, see scripts/_job.sh] scripts/eval_t0.sh [--dry_run] [--gin.X=...]
# EXPERIMENT is the training experiment (it defines MODEL); runs/eval_t0.gin is stacked after it.
# Common: --gin.CHECKPOINT_STEP="'all'", --gin.EVAL_CONTROLS="['shuffle','empty']".
set -euo pipefail
source "$(dirname "$0")/_job.sh"
experiment="${EXPERIMENT:-experiments/hint_finetune_t0.gin}"
_job_parse "$@"
if [ "$DRY_RUN" = 1 ]; then
  # A one-step tiny training run gives the evaluation a checkpoint to load.
  : "${MODEL_DIR:=$(mktemp -d "${TMPDIR:-/tmp}/hyper_tasks_dry_run.XXXXXX")}"
  export MODEL_DIR
  run_job hyper_tasks.train "$experiment" -- --dry_run
  set -- "$@" --gin.MAX_EXAMPLES=2
fi
run_job hyper_tasks.eval "$experiment" runs/eval_t0.gin -- "$@"
