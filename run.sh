#!/usr/bin/env bash
# The main job on a fresh machine: install everything, then train the quick supernet on Fashion-MNIST
# (digits where it is missing) within a time budget (default 15m: `bash run.sh --time-budget 30m` for more),
# fit its predictors and specialize it for cpu, pixel1 and note10. Rerunning continues where a stopped run left off.
#   bash run.sh [quickstart options]   the main job
#   bash run.sh test                   the tests, in the same Python environment
# Python: the active virtual environment if there is one, else ./.venv (created here; it sees the system's
# packages, so an installed torch is reused). Distributions that mark their Python externally managed (PEP 668:
# Debian 12, Ubuntu 23.04 and later) refuse a system-wide `pip install`; a venv is what they ask for.
set -euo pipefail
cd "$(dirname "$0")"

python_env() {   # prints the python to use, creating .venv when needed
  if [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    command -v python3; return                                      # already inside a virtual environment
  fi
  if [ -x .venv/bin/python ]; then echo "$PWD/.venv/bin/python"; return; fi
  if python3 -m venv --system-site-packages .venv >/dev/null 2>&1; then
    echo "$PWD/.venv/bin/python"; return
  fi
  rm -rf .venv
  # no ensurepip (Debian without python3-venv): a venv without pip, filled by the system's pip (pip >= 22.3)
  if python3 -m venv --system-site-packages --without-pip .venv >/dev/null 2>&1 \
     && python3 -m pip --python .venv/bin/python --version >/dev/null 2>&1; then
    echo "$PWD/.venv/bin/python"; return
  fi
  rm -rf .venv
  if python3 -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
    echo "error: this Python is externally managed (PEP 668) and cannot create a virtual environment;" \
         "install python3-venv (apt-get install python3-venv) or activate a venv, then rerun" >&2
    exit 2
  fi
  echo "note: no virtual environment available; installing into this Python ($(command -v python3))" >&2
  command -v python3
}

pip_install() {
  if "$PY" -m pip --version >/dev/null 2>&1; then "$PY" -m pip install -q -e ".[test]"
  else python3 -m pip --python "$PY" install -q -e ".[test]"; fi
}

PY="$(python_env)"
if [ "${1:-}" = "test" ]; then
  shift
  pip_install && exec "$PY" -m pytest -q --durations=15 "$@"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "note: could not install dataset-fashion-mnist; the job will use scikit-learn's digits"
fi
pip_install
case "$PY" in
  "$PWD/.venv/bin/python") echo "ofa is installed in .venv: \`. .venv/bin/activate\` puts \`ofa\` on your PATH" ;;
esac
exec "$PY" -m ofa quickstart --run checkpoints/quickstart "$@"
