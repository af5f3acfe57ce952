#!/usr/bin/env bash
# Configures and builds one flavour: release (default), sanitize (ASan + UBSan) or fuzz (libFuzzer,
# clang). With MOECKPT_PYTHON=/path/to/python the release tree also builds the Python extension
# (into build/python-package, see python/CMakeLists.txt) from the same objects as the CLI and tests;
# without it the extension is left out. The fuzz build compiles each layer as one unity batch, so a
# name two files of a layer share cannot go unnoticed.
# ccache is used when installed (scripts/setup.sh installs it); MOECKPT_JOBS sets the parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=${1:-release}
source scripts/ccache_env.sh
launcher=()
[ -z "$compiler_launcher" ] || launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER="$compiler_launcher")
common=(-G Ninja -DMOECKPT_WERROR=ON "${launcher[@]}")
jobs=()
[ -z "${MOECKPT_JOBS:-}" ] || jobs=(-j "$MOECKPT_JOBS")
case "$flavour" in
  release)  python=(-DMOECKPT_BUILD_PYTHON=OFF)  # the demo needs no Python environment
            [ -z "${MOECKPT_PYTHON:-}" ] || python=(-DMOECKPT_BUILD_PYTHON=ON "-DPython_EXECUTABLE=$MOECKPT_PYTHON")
            cmake -S . -B build "${common[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${python[@]}" >/dev/null
            cmake --build build "${jobs[@]}" ;;
  sanitize) cmake -S . -B build-asan "${common[@]}" -DCMAKE_BUILD_TYPE=Debug -DMOECKPT_SANITIZE=ON \
                  -DMOECKPT_BUILD_BENCH=OFF >/dev/null
            cmake --build build-asan "${jobs[@]}" ;;
  fuzz)     CXX=clang++ cmake -S . -B build-fuzz -G Ninja "${launcher[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
                  -DMOECKPT_BUILD_FUZZERS=ON -DMOECKPT_BUILD_TESTS=OFF -DMOECKPT_BUILD_BENCH=OFF \
                  -DMOECKPT_UNITY_BATCH=0 >/dev/null
            cmake --build build-fuzz "${jobs[@]}" ;;
  *) echo "usage: $0 [release|sanitize|fuzz]" >&2; exit 2 ;;
esac
