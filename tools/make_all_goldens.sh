#!/usr/bin/env bash
# Regenerates the committed golden data for the C++ parity tests (no torch needed to run those tests):
#
#   tests/data/ragged/hf/, tests/data/ragged/hf_nonan/      the ragged HF fixture (tools/make_ragged_fixture.py)
#   tests/data/ragged/to_hf_special_input.safetensors      native tensors with special BF16 values (to_hf input)
#   tests/data/goldens/{tiny,ragged,ragged_nonan}.json      digests of Automodel's outputs (tools/digest_goldens.py)
#
# Steps: set up the oracle venv; `moeckpt synth --preset tiny --seed 1` (the C++ test regenerates the same bytes);
# the ragged fixture; make_goldens on tiny (EP 3: 8 experts over 3 ranks, uneven; EP 2), ragged/hf (EP 4: 6 over 4,
# uneven; EP 2) and ragged/hf_nonan (EP 1 only); digests. Full outputs stay in $WORK (default /tmp/moeckpt-goldens).
#
# Usage: tools/make_all_goldens.sh          (from anywhere; needs ./build/moeckpt, override with MOECKPT=...)
# Env:   ORACLE_VENV (default <repo>/.venv-oracle), WORK, MOECKPT, SKIP_SETUP=1 (skip tools/setup_oracle.sh),
#        OMP_NUM_THREADS (default 1: the oracle is elementwise, threads do not change results).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${ORACLE_VENV:-$ROOT/.venv-oracle}"
WORK="${WORK:-/tmp/moeckpt-goldens}"
MOECKPT="${MOECKPT:-$ROOT/build/moeckpt}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
PY="$VENV/bin/python"

# (a) oracle
if [ "${SKIP_SETUP:-0}" != 1 ]; then
  ORACLE_VENV="$VENV" tools/setup_oracle.sh
fi

# (b) tiny fixture, from the C++ generator
[ -x "$MOECKPT" ] || { echo "error: $MOECKPT not found (build first, or set MOECKPT)" >&2; exit 1; }
rm -rf "$WORK/tiny" "$WORK/ragged" "$WORK/ragged_nonan"
mkdir -p "$WORK/tiny"
"$MOECKPT" synth "$WORK/tiny/hf" --preset tiny --seed 1

# (c) ragged fixture (numpy only; the oracle venv has numpy)
"$PY" tools/make_ragged_fixture.py tests/data/ragged/hf --nonan-dir tests/data/ragged/hf_nonan

# (d) oracle outputs. --special-input targets: the to_hf special-values input holds only the planted tensors.
run_goldens() {
  local hf="$1" out="$2"
  shift 2
  "$PY" tools/make_goldens.py "$hf" "$out" --special-input targets "$@" 2>&1 |
    grep -v -e '`torch_dtype` is deprecated' || true
  [ -f "$out/GOLDENS.json" ] || { echo "error: make_goldens failed for $hf" >&2; exit 1; }
}
run_goldens "$WORK/tiny/hf" "$WORK/tiny/out" --ep 3 --ep 2
# Ragged: special values only in an expert gate_and_up (split into gate and up), a quantized non-expert weight and a
# non-quantized one (passed through), so the committed to_hf_special_input stays small.
RAGGED_SPECIAL="model.layers.1.mlp.experts.gate_and_up_projs,model.layers.1.self_attn.q_proj.weight"
RAGGED_SPECIAL+=",model.layers.1.self_attn.o_proj.weight"
run_goldens tests/data/ragged/hf "$WORK/ragged/out" --ep 4 --ep 2 --special-targets "$RAGGED_SPECIAL"
run_goldens tests/data/ragged/hf_nonan "$WORK/ragged_nonan/out" --special-targets "$RAGGED_SPECIAL"

# (e) digests (standard library only)
mkdir -p tests/data/goldens
"$PY" tools/digest_goldens.py "$WORK/tiny/out" tests/data/goldens/tiny.json --root "$ROOT"
"$PY" tools/digest_goldens.py "$WORK/ragged/out" tests/data/goldens/ragged.json --root "$ROOT"
"$PY" tools/digest_goldens.py "$WORK/ragged_nonan/out" tests/data/goldens/ragged_nonan.json --root "$ROOT"

# (f) the ragged special-values input (the C++ to-hf special test converts it); the tiny one is not kept (size)
cp "$WORK/ragged/out/to_hf_special_input.safetensors" tests/data/ragged/to_hf_special_input.safetensors
chmod 644 tests/data/ragged/to_hf_special_input.safetensors

echo "sizes:"
du -b -s tests/data/ragged/hf tests/data/ragged/hf_nonan tests/data/ragged/to_hf_special_input.safetensors \
  tests/data/goldens/*.json
du -b -s -c tests/data/ragged tests/data/goldens | tail -1
