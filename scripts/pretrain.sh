#!/usr/bin/env bash
# HINT stage 1: hypernetwork pretraining on C4 (needs C4_PATH, usually INITIAL_CHECKPOINT_PATH = an HF T5-LM-adapt directory).
# Usage: MODEL_DIR=... [env, see scripts/_job.sh] scripts/pretrain.sh [--dry_run] [--gin.X=...]
set -euo pipefail
source "$(dirname "$0")/_job.sh"
run_job hyper_tasks.train "${EXPERIMENT:-experiments/hint_pretrain_c4.gin}"  -- "$@"
