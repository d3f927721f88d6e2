# Sourced by the job scripts: one function, `run_job MODULE GIN_FILE... -- ARGS`.
#
# Environment (nothing is baked in; every path comes from here or from flags):
#   MODEL_DIR                 where the job writes (a local path or a cloud URL). Required,
#                             except with --dry_run (a temporary directory).
#   PYTHON                    interpreter (default: .venv/bin/python if present, else python3)
#   SNI_DIR, C4_PATH, P3_TEMPLATES_DIR, P3_DATA_DIR, TFDS_DATA_DIR,
#   INITIAL_CHECKPOINT_PATH   forwarded as the gin macros of the same names when set
#   EXPERIMENT                the experiment gin file (each script has a default)
# Arguments: --check (check the real configuration as configured: data, vocabulary,
# lengths, mesh, restore plan, lowered step, without running it; MODEL_DIR may be
# unset; --compile / --check_devices=N go with it), --dry_run (stack gin/tiny.gin and
# run one step at tiny size on the embedded stand-in data), anything else is forwarded
# to the entry point (e.g. --gin.TRAIN_STEPS=20000 --gin.BATCH_SIZE=128 --gin_file=...).

_job_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_job_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -x "$_job_root/.venv/bin/python" ]; then echo "$_job_root/.venv/bin/python"
  else echo python3; fi
}

# Split "$@" into DRY_RUN (0/1), CHECK (0/1) and PASS (the rest; --check stays in it).
_job_parse() {
  DRY_RUN=0; CHECK=0; PASS=()
  for a in "$@"; do
    case "$a" in
      --dry_run|--dry-run) DRY_RUN=1 ;;
      --check) CHECK=1; PASS+=("$a") ;;
      *) PASS+=("$a") ;;
    esac
  done
}

# Gin bindings for the data/checkpoint environment variables that are set.
_job_env_bindings() {
  ENV_BINDINGS=()
  local name
  for name in SNI_DIR C4_PATH P3_TEMPLATES_DIR P3_DATA_DIR TFDS_DATA_DIR \
              INITIAL_CHECKPOINT_PATH; do
    if [ -n "${!name:-}" ]; then ENV_BINDINGS+=("--gin.${name}='${!name}'"); fi
  done
}

# run_job MODULE GIN_FILE [GIN_FILE...] -- ARGS...
run_job() {
  local module="$1"; shift
  local gin_files=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do gin_files+=("--gin_file=$1"); shift; done
  [ "${1:-}" = "--" ] && shift
  _job_parse "$@"
  _job_env_bindings
  local py; py="$(_job_python)"
  local tiny=()
  if [ "$DRY_RUN" = 1 ]; then
    : "${MODEL_DIR:=$(mktemp -d "${TMPDIR:-/tmp}/hyper_tasks_dry_run.XXXXXX")}"
    tiny=(--gin_file=tiny.gin --gin.TRAIN_STEPS=1)
    export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
  elif [ "$CHECK" = 1 ]; then
    # A check writes nothing; MODEL_DIR only names where a real run would write.
    : "${MODEL_DIR:=${TMPDIR:-/tmp}/hyper_tasks_check_model_dir}"
  fi
  if [ -z "${MODEL_DIR:-}" ]; then
    echo "error: set MODEL_DIR (a local path or a gs:// URL: MODEL_DIR=<where the run writes> $0 ...)" >&2
    return 2
  fi
  local cmd=("$py" -m "$module" "${gin_files[@]}" "${tiny[@]}" "${ENV_BINDINGS[@]}"
             "--gin.MODEL_DIR='${MODEL_DIR}'" "${PASS[@]}")
  echo "[hyper-tasks] ${cmd[*]}" >&2
  "${cmd[@]}"
}

# run_eval RUN_GIN DEFAULT_EXPERIMENT -- ARGS...: evaluate MODEL_DIR's checkpoints with
# the training experiment (it defines MODEL) and RUN_GIN stacked after it. --dry_run
# first trains one tiny step when MODEL_DIR holds no checkpoint to evaluate.
run_eval() {
  local run_gin="$1" experiment="${EXPERIMENT:-$2}"; shift 2
  [ "${1:-}" = "--" ] && shift
  _job_parse "$@"
  if [ "$DRY_RUN" = 1 ]; then
    : "${MODEL_DIR:=$(mktemp -d "${TMPDIR:-/tmp}/hyper_tasks_dry_run.XXXXXX")}"
    export MODEL_DIR
    if [ ! -d "$MODEL_DIR/checkpoints" ]; then
      run_job hyper_tasks.train "$experiment" -- --dry_run
    fi
    set -- "$@" --gin.MAX_EXAMPLES=2
  fi
  run_job hyper_tasks.eval "$experiment" "$run_gin" -- "$@"
}
