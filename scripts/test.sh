#!/usr/bin/env bash
# Quick start, part 2: install, build and run every test: the unit/integration suite (release and
# ASan+UBSan builds), valgrind on the tiny preset, the Python package's tests, and each libFuzzer
# target for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz_seconds=${MOECKPT_FUZZ_SECONDS:-60}
./scripts/setup.sh

echo "== release build and tests"
./scripts/build.sh release
ctest --test-dir build --output-on-failure -j2

echo "== valgrind (memcheck) on the tiny preset"
./scripts/valgrind.sh build/moeckpt

echo "== ASan + UBSan build and tests"
./scripts/build.sh sanitize
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j2

echo "== Python package: pip install . and pytest (parity with the installed reference adapter)"
./scripts/test_python.sh

echo "== fuzz targets (${fuzz_seconds}s each)"
./scripts/build.sh fuzz
./scripts/fuzz.sh "$fuzz_seconds"
echo "all tests passed"
