#!/usr/bin/env bash
# Evaluate MODEL_DIR's checkpoints on the T0 held-out tasks by rank classification (needs P3_TEMPLATES_DIR, P3_DATA_DIR).
# Usage: MODEL_DIR=... [env, see scripts/_job.sh] scripts/eval_t0.sh [--dry_run] [--gin.X=...]
# EXPERIMENT is the training experiment (it defines MODEL); runs/eval_t0.gin is stacked after it.
# Common: --gin.CHECKPOINT_STEP="'all'", --gin.EVAL_CONTROLS="['shuffle','empty']".
set -euo pipefail
source "$(dirname "$0")/_job.sh"
run_eval runs/eval_t0.gin experiments/hint_finetune_t0.gin -- "$@"
