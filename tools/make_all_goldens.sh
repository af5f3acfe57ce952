#!/usr/bin/env bash
# Regenerates the committed golden data for the C++ parity tests (no torch needed to run those tests):
#
#   tests/data/ragged/hf/, tests/data/ragged/hf_nonan/      the ragged HF fixture (tools/make_ragged_fixture.py)
#   tests/data/ragged/to_hf_special_input.safetensors      native tensors with special BF16 values (to_hf input)
#   tests/data/goldens/{tiny,ragged,ragged_nonan}.json      digests of Automodel 0.7.0's outputs (tools/digest_goldens.py)
#   tests/data/goldens/tiny_te.json                         tiny through 0.7.0 with the TE attention backend
#   tests/data/v26/, tests/data/goldens/v26_tp{2,4}.json   the MiMo-V2.6 fixture and its 0.7.0 goldens
#   tests/data/v25/, tests/data/goldens/v25.json           the MiMo-V2.5-Pro fixture and its 0.7.0 (mimo_v25) goldens
#   tests/data/goldens/{qwen3_moe,glm4_moe,minimax_m2,gpt_oss}_tiny.json   the HF MoE families' tiny presets
#                                                          (tools/make_hf_moe_goldens.py)
#   tests/data/goldens/{tiny,ragged,ragged_nonan}_am06.json the same inputs through Automodel 0.6.0 (to_hf ignores
#                                                          quantization=False there: see tools/ORACLE_NOTES.md)
#
# Steps: set up the oracle venv; `moeckpt synth --preset tiny --seed 1` (the C++ test regenerates the same bytes);
# the ragged fixture; make_goldens on tiny (EP 3: 8 experts over 3 ranks, uneven; EP 2), ragged/hf (EP 4: 6 over 4,
# uneven; EP 2) and ragged/hf_nonan (EP 1 only); digests; then the same three runs with nemo-automodel 0.6.0 (installed
# with --no-deps into $AM06_SITE and put first on PYTHONPATH over the oracle venv, whose torch / transformers it
# reuses). Full outputs stay in $WORK (default /tmp/moeckpt-goldens; 0.6.0 ones under $WORK/am06/).
#
# Usage: tools/make_all_goldens.sh          (from anywhere; needs ./build/moeckpt, override with MOECKPT=...)
# Env:   ORACLE_VENV (default <repo>/.venv-oracle), WORK, MOECKPT, SKIP_SETUP=1 (skip tools/setup_oracle.sh),
#        OMP_NUM_THREADS (default 1: the oracle is elementwise, threads do not change results),
#        AM06_SITE (default <repo>/.am06-site, created if missing), SKIP_AM06=1 (skip the 0.6.0 goldens).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${ORACLE_VENV:-$ROOT/.venv-oracle}"
WORK="${WORK:-/tmp/moeckpt-goldens}"
MOECKPT="${MOECKPT:-$ROOT/build/moeckpt}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
PY="$VENV/bin/python"
AM06_SITE="${AM06_SITE:-$ROOT/.am06-site}"

# (a) oracle
if [ "${SKIP_SETUP:-0}" != 1 ]; then
  ORACLE_VENV="$VENV" tools/setup_oracle.sh
fi

# (b) tiny fixture, from the C++ generator
[ -x "$MOECKPT" ] || { echo "error: $MOECKPT not found (build first, or set MOECKPT)" >&2; exit 1; }
rm -rf "$WORK/tiny" "$WORK/ragged" "$WORK/ragged_nonan" "$WORK/am06"
mkdir -p "$WORK/tiny"
"$MOECKPT" synth "$WORK/tiny/hf" --preset tiny --seed 1

# (c) ragged fixture (numpy only; the oracle venv has numpy)
"$PY" tools/make_ragged_fixture.py tests/data/ragged/hf --nonan-dir tests/data/ragged/hf_nonan

# (d) oracle outputs. --special-input targets: the to_hf special-values input holds only the planted tensors.
run_goldens() {
  local hf="$1" out="$2"
  shift 2
  "$PY" tools/make_goldens.py "$hf" "$out" --special-input targets "$@" 2>&1 |
    grep -v -e '`torch_dtype` is deprecated' -e grouped_gemm || true
  [ -f "$out/GOLDENS.json" ] || { echo "error: make_goldens failed for $hf" >&2; exit 1; }
}
# Ragged: special values only in an expert gate_and_up (split into gate and up), a quantized non-expert weight and a
# non-quantized one (passed through), so the committed to_hf_special_input stays small.
RAGGED_SPECIAL="model.layers.1.mlp.experts.gate_and_up_projs,model.layers.1.self_attn.q_proj.weight"
RAGGED_SPECIAL+=",model.layers.1.self_attn.o_proj.weight"
run_all() {  # $1: output root
  run_goldens "$WORK/tiny/hf" "$1/tiny/out" --ep 3 --ep 2
  run_goldens tests/data/ragged/hf "$1/ragged/out" --ep 4 --ep 2 --special-targets "$RAGGED_SPECIAL"
  run_goldens tests/data/ragged/hf_nonan "$1/ragged_nonan/out" --special-targets "$RAGGED_SPECIAL"
}
run_all "$WORK"

# (e) digests (standard library only)
mkdir -p tests/data/goldens
"$PY" tools/digest_goldens.py "$WORK/tiny/out" tests/data/goldens/tiny.json --root "$ROOT"
"$PY" tools/digest_goldens.py "$WORK/ragged/out" tests/data/goldens/ragged.json --root "$ROOT"
"$PY" tools/digest_goldens.py "$WORK/ragged_nonan/out" tests/data/goldens/ragged_nonan.json --root "$ROOT"

# (e2) Automodel 0.6.0 on the same inputs (its to_hf quantizes regardless of the flag: GOLDENS.json
#      quantization_honoured is False, to_hf_noquant equals to_hf)
if [ "${SKIP_AM06:-0}" != 1 ]; then
  if [ ! -d "$AM06_SITE/nemo_automodel" ]; then
    "$PY" -m pip install --no-deps --target "$AM06_SITE" nemo-automodel==0.6.0
  fi
  PYTHONPATH="$AM06_SITE${PYTHONPATH:+:$PYTHONPATH}" run_all "$WORK/am06"
  v="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["nemo_automodel"])' \
    "$WORK/am06/tiny/out/GOLDENS.json")"
  [ "$v" = 0.6.0 ] || { echo "error: $AM06_SITE gave nemo-automodel $v, expected 0.6.0" >&2; exit 1; }
  for f in tiny ragged ragged_nonan; do
    "$PY" tools/digest_goldens.py "$WORK/am06/$f/out" "tests/data/goldens/${f}_am06.json" --root "$ROOT"
  done
fi

# (e3) Automodel's TE naming (backend.attn = "te": the sink is attn_module.softmax_offset, F32) on the tiny fixture
run_goldens "$WORK/tiny/hf" "$WORK/te/tiny/out" --ep 3 --ep 2 --attn te
"$PY" tools/digest_goldens.py "$WORK/te/tiny/out" tests/data/goldens/tiny_te.json --root "$ROOT"

# (e4) the MiMo-V2.6 layout (fused QKV over metadata.tp_size 2 and 4, MXFP4 experts, visual/audio towers)
"$PY" tools/make_v26_fixture.py tests/data/v26
for tp in 2 4; do
  "$PY" tools/make_v26_goldens.py "tests/data/v26/tp$tp/hf" "$WORK/v26/tp$tp" --ep 3 2>&1 |
    grep -v -e '`torch_dtype` is deprecated' -e grouped_gemm || true
  "$PY" tools/digest_goldens.py "$WORK/v26/tp$tp" "tests/data/goldens/v26_tp$tp.json" --root "$ROOT"
done

# (e5) the MiMo-V2.5-Pro layout (qkv_proj interleaved over num_key_value_heads, kept fused natively; FP8 experts)
"$PY" tools/make_v26_fixture.py --v25 tests/data/v25/hf
"$PY" tools/make_v26_goldens.py tests/data/v25/hf "$WORK/v25" --ep 3 --v25 2>&1 |
  grep -v -e '`torch_dtype` is deprecated' -e grouped_gemm || true
"$PY" tools/digest_goldens.py "$WORK/v25" tests/data/goldens/v25.json --root "$ROOT"

# (e6) Qwen3-MoE, GLM-4.5, MiniMax-M2 and gpt-oss (Automodel 0.7.0's adapters as Qwen3MoeForCausalLM /
#      Glm4MoeForCausalLM / MiniMaxM2ForCausalLM / GptOssForCausalLM build them) on the tiny presets (synth --seed 1;
#      the C++ test regenerates the same bytes)
for preset in qwen3-moe-tiny glm4-moe-tiny minimax-m2-tiny gpt-oss-tiny; do
  rm -rf "$WORK/$preset"
  "$MOECKPT" synth "$WORK/$preset/hf" --preset "$preset" --seed 1
  "$PY" tools/make_hf_moe_goldens.py "$WORK/$preset/hf" "$WORK/$preset/out" --special-input targets --ep 3 --ep 2 2>&1 |
    grep -v -e '`torch_dtype` is deprecated' -e grouped_gemm -e _token_id || true
  "$PY" tools/digest_goldens.py "$WORK/$preset/out" "tests/data/goldens/${preset//-/_}.json" --root "$ROOT"
done

# (f) the ragged special-values input (the C++ to-hf special test converts it); the tiny one is not kept (size)
cp "$WORK/ragged/out/to_hf_special_input.safetensors" tests/data/ragged/to_hf_special_input.safetensors
chmod 644 tests/data/ragged/to_hf_special_input.safetensors

echo "sizes:"
du -b -s tests/data/ragged/hf tests/data/ragged/hf_nonan tests/data/ragged/to_hf_special_input.safetensors \
  tests/data/goldens/*.json
du -b -s -c tests/data/ragged tests/data/goldens | tail -1
