#!/usr/bin/env bash
# The Python package as users get it: `pip install .` (scikit-build-core compiles the C++ engine
# and the extension from source) into the test venv (scripts/python_env.sh), then pytest against
# the installed package. Part of `scripts/test.sh --full`; the fast tier tests the extension built
# in the release tree instead (scripts/test.sh). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${MOECKPT_PY_VENV:-$ROOT/.venv-py}"
"$ROOT/scripts/python_env.sh"
VPY="$VENV/bin/python"

echo "test_python: pip install . (builds the C++ engine and the extension)"
# No build isolation: the backend comes from the venv (no second download per run). The build
# folder build-python/ is kept, so a re-run recompiles only what changed. The test build takes the
# release tree's build type and warning flags, so with ccache (scripts/setup.sh installs it) its
# objects are the release build's, compiled once (the published wheel stays Release, pyproject.toml).
source "$ROOT/scripts/ccache_env.sh"
ccache=()
if [ -n "$compiler_launcher" ]; then
  ccache=(-C "cmake.define.CMAKE_CXX_COMPILER_LAUNCHER=$compiler_launcher")
  # The same compiler path as the release tree (scikit-build-core would name g++ where CMake chose
  # c++, which ccache hashes as another compiler).
  cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:FILEPATH=//p' build/CMakeCache.txt 2>/dev/null || true)
  [ -z "$cxx" ] || ccache+=(-C "cmake.define.CMAKE_CXX_COMPILER=$cxx")
fi
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" "$VPY" -m pip \
  --disable-pip-version-check -q install --no-build-isolation --force-reinstall --no-deps \
  -C cmake.build-type=RelWithDebInfo -C cmake.define.MOECKPT_WERROR=ON "${ccache[@]}" .

# From outside the source tree, so `import moeckpt` is the installed package.
cd "$ROOT/tests/python"
env -u PYTHONPATH "$VPY" -m pytest -q -p no:cacheprovider -n "$(nproc)" --durations=10 "$@" .
