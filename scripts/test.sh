#!/usr/bin/env bash
# Install (idempotently, into .venv) and run the whole test suite. Extra arguments go
# to pytest, e.g. `scripts/test.sh tests/models -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv test
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" TF_CPP_MIN_LOG_LEVEL=3
# Dropout masks: rbg keys compile much faster than threefry on CPU.
export JAX_DEFAULT_PRNG_IMPL="${JAX_DEFAULT_PRNG_IMPL:-rbg}"
exec "$HYPER_TASKS_PY" -m pytest -q -p no:cacheprovider --durations=25 "${@:-tests}"
