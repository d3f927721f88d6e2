#!/usr/bin/env bash
# The main job on the embedded default: install (idempotently, into .venv), then train a
# tiny HINT in two stages (hypernetwork pretraining on the shipped text, multi-task
# finetuning on the toy instruction tasks and the shipped SNI-format tasks, with and
# without 2 positive examples per instruction), evaluate on held-out instructions and
# operations, zero-shot and with 2 examples, and print a table comparing HINT with the
# concatenated-instruction baseline and the no-instruction control. CPU, about 14 min
# on a shared 2-core machine (benchmarks/RESULTS.md, "Embedded demo").
# Extra arguments go to `python -m hyper_tasks.demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" TF_CPP_MIN_LOG_LEVEL=3
# Dropout masks: rbg keys compile much faster than threefry on CPU.
export JAX_DEFAULT_PRNG_IMPL="${JAX_DEFAULT_PRNG_IMPL:-rbg}"
# Tiny models: XLA's -O1 compiles every function (train steps, decoding loops) about
# a third faster than the default and runs them as fast; compilation is most of the
# demo's fixed cost.
export XLA_FLAGS="${XLA_FLAGS:---xla_backend_optimization_level=1}"
exec "$HYPER_TASKS_PY" -m hyper_tasks.demo "$@"
