#!/usr/bin/env bash
# Builds and tests the Python package on a fresh Debian 12 machine (after scripts/setup.sh): a venv
# (default .venv-py, gitignored; reused when present) with torch from PyPI, the reference adapter
# (nemo-automodel 0.7.0 without its dependency tree, as tools/setup_oracle.sh), the build backend, then
# `pip install .` (the real package build, C++ compiled from source) and pytest. Idempotent.
#
# Overrides: MOECKPT_PY_VENV, PYTHON, TORCH_SPEC, AUTOMODEL_SPEC, TRANSFORMERS_SPEC.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${MOECKPT_PY_VENV:-$ROOT/.venv-py}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.11.*}"
AUTOMODEL_SPEC="${AUTOMODEL_SPEC:-nemo-automodel==0.7.0}"
TRANSFORMERS_SPEC="${TRANSFORMERS_SPEC:-transformers==5.18.0}"  # what nemo-automodel 0.7.0 declares

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# Quiet pip; hides the resolver's notes about nemo-automodel's undeclared (GPU/training) dependencies,
# which are deliberately not installed. Shows the log and fails if pip fails.
pipq() {
  local log
  log="$(mktemp)"
  if ! "$VPY" -m pip --disable-pip-version-check -q install "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  grep -v -e "dependency resolver does not currently" -e "which is not installed" -e "which is incompatible" "$log" || true
  rm -f "$log"
}

echo "test_python: preparing $VENV"
pipq --upgrade pip
pipq "$TORCH_SPEC" safetensors numpy pytest
pipq --no-deps "$AUTOMODEL_SPEC"
pipq "$TRANSFORMERS_SPEC" pyyaml pydantic fsspec
pipq "scikit-build-core>=0.10" "nanobind>=2.0"

echo "test_python: pip install . (builds the C++ engine and the extension)"
# No build isolation: the backend comes from the venv above (no second download per run); the build
# folder build-python/ is kept, so a re-run recompiles only what changed.
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" pipq --no-build-isolation --force-reinstall --no-deps .

# From outside the source tree, so `import moeckpt` is the installed package.
cd "$ROOT/tests/python"
"$VPY" -m pytest -q -p no:cacheprovider "$@" .
