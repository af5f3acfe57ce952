#!/usr/bin/env bash
# Quick start, part 2: the tests, in two tiers (docs/TESTING.md).
#
#   ./scripts/test.sh          The fast tier, for newcomers and every change: one release build (the
#                              CLI, the C++ tests and the Python extension from the same objects), every
#                              ctest test and every pytest test against Automodel 0.7.0, side by side,
#                              with the randomized trials and multi-process launch sizes cut down
#                              (MOECKPT_TEST_TIER=fast) and the tests' folders in memory (/dev/shm,
#                              when it has 12 GiB free; MOECKPT_TEST_TMPDIR=DIR chooses another).
#   ./scripts/test.sh --full   What CI runs (.ci/run): the fast tier's tests at full strength (every
#                              trial, every launch size; pytest against the package `pip install .`
#                              builds), valgrind, the ASan+UBSan build and its ctest, and each libFuzzer
#                              target for MOECKPT_FUZZ_SECONDS (default 60).
#
# Each phase prints its wall time, and a summary closes the run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
tier=fast
case "${1:-}" in
  "") ;;
  --full) tier=full ;;
  -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--full]" >&2; exit 2 ;;
esac
export MOECKPT_TEST_TIER=$tier
jobs=$(nproc)
fuzz_seconds=${MOECKPT_FUZZ_SECONDS:-60}
VENV="${MOECKPT_PY_VENV:-$ROOT/.venv-py}"

# The fast tier's scratch folder: the tests write, fsync and read back a few GB, and on this
# VM's disk the waiting was a third of the run. The full tier keeps the disk (O_DIRECT, fsync and
# the page cache as users have them).
if [ "$tier" = fast ] && [ -z "${MOECKPT_TEST_TMPDIR:-}" ]; then
  shm_free_kb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $4 }')
  if [ -n "$shm_free_kb" ] && [ "$shm_free_kb" -ge $((12 * 1024 * 1024)) ] && [ -w /dev/shm ]; then
    MOECKPT_TEST_TMPDIR=/dev/shm
  fi
fi
if [ -n "${MOECKPT_TEST_TMPDIR:-}" ]; then
  scratch=$(mktemp -d "$MOECKPT_TEST_TMPDIR/moeckpt-tests.XXXXXX")
  trap 'rm -rf "$scratch"' EXIT
  export TMPDIR=$scratch
fi

summary=()
phase() {  # phase NAME COMMAND...: runs COMMAND, records its wall time
  local name=$1 t0=$SECONDS
  shift
  echo "== $name"
  "$@"
  summary+=("$(printf '%6d s  %s' $((SECONDS - t0)) "$name")")
  echo "-- $name: $((SECONDS - t0)) s"
}

pytest_build_tree() {  # pytest against the extension of the release tree (no second compile)
  (cd tests/python && PYTHONPATH="$ROOT/build/python-package" MOECKPT_CLI="$ROOT/build/moeckpt" \
     "$VENV/bin/python" -m pytest -q -p no:cacheprovider -n "$jobs" --durations=10 .)
}
ctest_release() { ctest --test-dir build --output-on-failure -j "$jobs"; }
# The fast tier runs ctest (in the background, two tests per core: many of them wait on child
# processes) beside pytest: together they keep both cores busy. ctest's output follows pytest's.
ctest_and_pytest() {
  local log rc=0 ctest_rc=0
  log=$(mktemp "${TMPDIR:-/tmp}/moeckpt-ctest.XXXXXX")
  ctest --test-dir build --output-on-failure -j $((2 * jobs)) >"$log" 2>&1 &
  local pid=$!
  pytest_build_tree || rc=$?
  wait "$pid" || ctest_rc=$?
  echo "== ctest, release ($tier)"
  cat "$log"
  rm -f "$log"
  [ "$rc" -eq 0 ] || echo "pytest failed (exit $rc)" >&2
  [ "$ctest_rc" -eq 0 ] || echo "ctest failed (exit $ctest_rc)" >&2
  [ "$rc" -eq 0 ] && [ "$ctest_rc" -eq 0 ]
}
ctest_asan() {
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs"
}

phase "setup (Debian packages)" ./scripts/setup.sh
phase "Python environment" ./scripts/python_env.sh
phase "release build (CLI, tests, Python extension)" env MOECKPT_PYTHON="$VENV/bin/python" ./scripts/build.sh release
if [ "$tier" = fast ]; then
  phase "ctest and pytest (release tree's extension), side by side (fast)" ctest_and_pytest
else
  phase "ctest, release ($tier)" ctest_release
  phase "pip install . and pytest (full)" ./scripts/test_python.sh
  phase "valgrind (memcheck) on the tiny preset" ./scripts/valgrind.sh build/moeckpt
  phase "ASan + UBSan build" ./scripts/build.sh sanitize
  phase "ctest, ASan + UBSan (full)" ctest_asan
  phase "libFuzzer build" ./scripts/build.sh fuzz
  phase "fuzz targets (${fuzz_seconds} s each)" ./scripts/fuzz.sh "$fuzz_seconds"
fi
echo "== all tests passed ($tier tier), $SECONDS s"
printf '%s\n' "${summary[@]}"
