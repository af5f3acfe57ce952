#!/usr/bin/env bash
# The Python test environment: a venv (default .venv-py, gitignored) with torch from PyPI, the
# reference adapter (nemo-automodel 0.7.0 without its dependency tree, as tools/setup_oracle.sh
# installs it), pytest with pytest-xdist, and the build backend (scikit-build-core, nanobind).
# Idempotent and quick on a re-run: a stamp in the venv records what was installed, and pip runs
# again only when that changes. Prints nothing but progress; the interpreter is $VENV/bin/python.
#
# Overrides: MOECKPT_PY_VENV, PYTHON, TORCH_SPEC, AUTOMODEL_SPEC, TRANSFORMERS_SPEC.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MOECKPT_PY_VENV:-$ROOT/.venv-py}"
TEST_DEPS=(pytest pytest-xdist "scikit-build-core>=0.10" "nanobind>=2.0")
want="$(cat "$ROOT/tools/setup_oracle.sh"; echo "${PYTHON:-} ${TORCH_SPEC:-} ${AUTOMODEL_SPEC:-}" \
        "${TRANSFORMERS_SPEC:-} ${TEST_DEPS[*]}")"
stamp="$VENV/.moeckpt-env"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "python_env: $VENV is up to date"
  exit 0
fi
echo "python_env: preparing $VENV"
# No pip cache: torch and its CUDA wheels are ~4 GB, and a second copy in ~/.cache/pip has filled a
# CI disk before.
export PIP_NO_CACHE_DIR=1
rm -f "$stamp"
ORACLE_VENV="$VENV" "$ROOT/tools/setup_oracle.sh"
"$VENV/bin/python" -m pip --disable-pip-version-check -q install "${TEST_DEPS[@]}"
printf '%s' "$want" >"$stamp"
