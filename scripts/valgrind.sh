#!/usr/bin/env bash
# Runs every CLI command on the tiny preset under valgrind memcheck (leaks included); any error
# fails. Usage: scripts/valgrind.sh [path/to/moeckpt] (default build/moeckpt).
set -euo pipefail
cd "$(dirname "$0")/.."
cli=$(realpath "${1:-build/moeckpt}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
vg() {
  echo "valgrind: moeckpt $*"
  valgrind --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect,possible \
    --errors-for-leak-kinds=definite,indirect,possible -q "$cli" "$@" >/dev/null
}
vg synth --seed 1 "$work/hf"
vg inspect "$work/hf"
vg from-hf "$work/hf" "$work/native" --quiet
vg from-hf "$work/hf" "$work/ep1" --ep-size 3 --ep-rank 1 --compat automodel --quiet
vg to-hf "$work/native" "$work/back" --quiet
vg to-hf "$work/native" "$work/cast" --compat automodel --quiet
vg verify "$work/back" "$work/hf"
vg from-hf "$work/hf" "$work/native" --overwrite --quiet
# A refusal is clean too (exit 1, not a valgrind error).
rc=0
valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect,possible -q "$cli" from-hf "$work/hf" "$work/native" \
  --quiet 2>/dev/null || rc=$?
[ "$rc" -eq 1 ] || { echo "valgrind: refusal exited $rc" >&2; exit 1; }
echo "valgrind: no errors"
