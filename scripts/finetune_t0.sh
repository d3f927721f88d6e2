#!/usr/bin/env bash
# HINT stage 2 on the T0/P3 mixture (needs P3_TEMPLATES_DIR, P3_DATA_DIR or the datasets package, INITIAL_CHECKPOINT_PATH).
# Usage: MODEL_DIR=... [env, see scripts/_job.sh] scripts/finetune_t0.sh [--dry_run] [--gin.X=...]
set -euo pipefail
source "$(dirname "$0")/_job.sh"
run_job hyper_tasks.train "${EXPERIMENT:-experiments/hint_finetune_t0.gin}"  -- "$@"
