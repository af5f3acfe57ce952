#!/usr/bin/env bash
# Runs every libFuzzer target in build-fuzz/ for SECONDS each (default 60), starting from its seed
# corpus in fuzz/corpus/<name>/ (copied: the committed seeds are never modified), and prints one
# summary line per target. Exits non-zero on the first finding, with the fuzzer's report.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(build-fuzz/fuzz/fuzz_*)
for target in "${targets[@]}"; do
  name=$(basename "$target")
  corpus=$(mktemp -d)
  cp -r "fuzz/corpus/${name#fuzz_}/." "$corpus/" 2>/dev/null || true
  seeds=$(find "$corpus" -type f | wc -l)
  log=$(mktemp)
  rc=0
  "$target" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 "$corpus" >"$log" 2>&1 || rc=$?
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  rss=$(grep -E '^stat::peak_rss_mb' "$log" | awk '{print $2}')
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$last")
  echo "$name: ${seconds}s, ${execs:-?} executions, cov ${cov:-?} edges, ft ${ft:-?} features," \
       "corpus ${seeds} seeds -> ${corp:-?} inputs, peak RSS ${rss:-?} MB, findings $([ "$rc" -eq 0 ] && echo 0 || echo 1)"
  rm -rf "$corpus"
  if [ "$rc" -ne 0 ]; then tail -60 "$log"; echo "fuzz target $name found a problem" >&2; exit 1; fi
  rm -f "$log"
done
