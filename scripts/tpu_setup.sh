#!/usr/bin/env bash
# Install hyper-tasks on a Cloud TPU VM (run on every worker, e.g. with
#   gcloud compute tpus tpu-vm ssh $TPU --worker=all --command="bash hyper-tasks/scripts/tpu_setup.sh"
# ). Creates .venv beside the checkout with JAX for TPU. Nothing here names a bucket:
# data and MODEL_DIR come from the job scripts' environment.
# Options: --dry_run prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
run() { if [ "${DRY:-0}" = 1 ]; then echo "+ $*"; else "$@"; fi; }
[ "${1:-}" = "--dry_run" ] && DRY=1
PY="${PYTHON:-python3}"
run "$PY" -m venv .venv
run .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
# The package with JAX's TPU extra (libtpu from the package index).
run .venv/bin/python -m pip install -q -e ".[tpu]"
run .venv/bin/python -c "import jax; print(jax.device_count(), 'devices:', jax.devices()[:4])"
echo "TPU VM ready. Multi-host jobs: bind hyper_tasks.train.partitioning.maybe_initialize_distributed.auto = True."
