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

# The reference adapter and torch exactly as the oracle uses them (tools/setup_oracle.sh honours
# TORCH_SPEC, AUTOMODEL_SPEC, TRANSFORMERS_SPEC and PYTHON), then the test runner and build backend.
echo "test_python: preparing $VENV"
ORACLE_VENV="$VENV" "$ROOT/tools/setup_oracle.sh"
VPY="$VENV/bin/python"
"$VPY" -m pip --disable-pip-version-check -q install pytest "scikit-build-core>=0.10" "nanobind>=2.0"

echo "test_python: pip install . (builds the C++ engine and the extension)"
# No build isolation: the backend comes from the venv above (no second download per run); the build
# folder build-python/ is kept, so a re-run recompiles only what changed.
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" "$VPY" -m pip --disable-pip-version-check -q install --no-build-isolation --force-reinstall --no-deps .

# From outside the source tree, so `import moeckpt` is the installed package.
cd "$ROOT/tests/python"
"$VPY" -m pytest -q -p no:cacheprovider "$@" .
