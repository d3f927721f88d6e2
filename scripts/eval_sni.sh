#!/usr/bin/env bash
# Evaluate MODEL_DIR's checkpoints on the SNI test tasks: ROUGE-L / exact match per task and category (needs SNI_DIR).
# Usage: MODEL_DIR=... [env, see scripts/_job.sh] scripts/eval_sni.sh [--dry_run] [--gin.X=...]
# EXPERIMENT is the training experiment (it defines MODEL); runs/eval_sni.gin is stacked after it.
# Common: --gin.CHECKPOINT_STEP="'all'", --gin.EVAL_CONTROLS="['shuffle','empty']".
set -euo pipefail
source "$(dirname "$0")/_job.sh"
run_eval runs/eval_sni.gin experiments/hint_finetune_sni.gin -- "$@"
