# Sourced by the scripts: make (idempotently) a virtual environment in .venv with the
# package installed in editable mode. Re-installs only when setup.py changed.
# Usage: ensure_venv [extra]   (extra: "test" for the test extra, empty for none)
ensure_venv() {
  local extra="${1:-}"
  local root; root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local venv="${HYPER_TASKS_VENV:-$root/.venv}"
  local py="${PYTHON:-}"
  if [ -z "$py" ]; then
    for cand in python3.11 python3.12 python3.10 python3; do
      if command -v "$cand" >/dev/null 2>&1; then py="$cand"; break; fi
    done
  fi
  if [ ! -x "$venv/bin/python" ]; then
    echo "[hyper-tasks] creating $venv with $py" >&2
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel >&2
  fi
  local spec="."
  [ -n "$extra" ] && spec=".[${extra}]"
  local stamp="$venv/.hyper_tasks_${extra:-base}.stamp"
  local want; want="$(cat "$root/setup.py" | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[hyper-tasks] installing $spec into $venv (first run takes a few minutes)" >&2
    (cd "$root" && "$venv/bin/python" -m pip install -q -e "$spec" >&2)
    echo "$want" > "$stamp"
  fi
  export PATH="$venv/bin:$PATH"
  export HYPER_TASKS_PY="$venv/bin/python"
}
