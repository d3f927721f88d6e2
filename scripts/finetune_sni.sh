#!/usr/bin/env bash
# HINT stage 2 on Super-NaturalInstructions (needs SNI_DIR and INITIAL_CHECKPOINT_PATH = the stage-1 MODEL_DIR).
# Usage: MODEL_DIR=... [env, see scripts/_job.sh] scripts/finetune_sni.sh [--dry_run] [--gin.X=...]
set -euo pipefail
source "$(dirname "$0")/_job.sh"
run_job hyper_tasks.train "${EXPERIMENT:-experiments/hint_finetune_sni.gin}"  -- "$@"
