#!/usr/bin/env bash
# Quick start, part 2: install, build and run every test: the unit/integration suite (release and
# ASan+UBSan builds) and each libFuzzer target for a bounded time.
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

echo "== fuzz targets (${fuzz_seconds}s each)"
./scripts/build.sh fuzz
for target in build-fuzz/fuzz/fuzz_*; do
  name=$(basename "$target")
  corpus=$(mktemp -d)
  cp -r "fuzz/corpus/${name#fuzz_}/." "$corpus/" 2>/dev/null || true
  log=$(mktemp)
  rc=0
  "$target" -max_total_time="$fuzz_seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 "$corpus" >"$log" 2>&1 || rc=$?
  echo "$name: $(grep -E '^stat::number_of_executed_units' "$log" || echo 'no stats')"
  rm -rf "$corpus"
  if [ "$rc" -ne 0 ]; then tail -60 "$log"; echo "fuzz target $name found a problem" >&2; exit 1; fi
  rm -f "$log"
done
echo "all tests passed"
