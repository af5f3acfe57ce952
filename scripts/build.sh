#!/usr/bin/env bash
# Configures and builds one flavour: release (default) or sanitize (ASan + UBSan).
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=${1:-release}
case "$flavour" in
  release)  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOECKPT_WERROR=ON >/dev/null
            cmake --build build ;;
  sanitize) cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMOECKPT_SANITIZE=ON \
                  -DMOECKPT_WERROR=ON >/dev/null
            cmake --build build-asan ;;
  fuzz)     CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
                  -DMOECKPT_BUILD_FUZZERS=ON -DMOECKPT_BUILD_TESTS=OFF >/dev/null
            cmake --build build-fuzz ;;
  *) echo "usage: $0 [release|sanitize|fuzz]" >&2; exit 2 ;;
esac
