#!/usr/bin/env bash
# dequantize / quantize against their two-step paths (from-hf then to-hf) on one input: wall time,
# bytes written and peak RSS, both measured from outside (/usr/bin/time -f "%e %M").
#
#   bench/hf_to_hf.sh [MOECKPT] [WORK]      (defaults: build/moeckpt, /tmp/moeckpt-hf2hf)
# The input is `synth --preset full --layers 2 --experts 64 --vocab 4096` (2.35 GiB FP8), made once.
set -euo pipefail
M=${1:-build/moeckpt}
W=${2:-/tmp/moeckpt-hf2hf}
mkdir -p "$W"
[ -f "$W/fp8/config.json" ] || "$M" synth "$W/fp8" --preset full --layers 2 --experts 64 --vocab 4096 >/dev/null
run() {  # label, command...
  local label=$1
  shift
  sync
  local t
  t=$( { /usr/bin/time -f "%e %M" "$@" --quiet >/dev/null; } 2>&1 | tail -1)
  printf "%-34s %8s s %8s MiB\n" "$label" "${t% *}" "$(( ${t#* } / 1024 ))"
}
bytes() { du -b -c "$1"/*.safetensors | tail -1 | cut -f1; }
rm -rf "$W"/{bf16,nat,two_bf16,fp8q,nat2,two_fp8}
echo "step                               wall        peak RSS"
run "dequantize"                    "$M" dequantize "$W/fp8" "$W/bf16"
run "  two-step: from-hf"           "$M" from-hf "$W/fp8" "$W/nat"
run "  two-step: to-hf --quant none" "$M" to-hf "$W/nat" "$W/two_bf16" --quant none
run "quantize"                      "$M" quantize "$W/bf16" "$W/fp8q"
run "  two-step: from-hf"           "$M" from-hf "$W/bf16" "$W/nat2"
run "  two-step: to-hf"             "$M" to-hf "$W/nat2" "$W/two_fp8"
echo "bytes written: dequantize $(bytes "$W/bf16") (two-step $(( $(bytes "$W/nat") + $(bytes "$W/two_bf16") )))," \
     "quantize $(bytes "$W/fp8q") (two-step $(( $(bytes "$W/nat2") + $(bytes "$W/two_fp8") )))"
"$M" verify "$W/bf16" "$W/two_bf16" | tail -1
"$M" verify "$W/fp8q" "$W/two_fp8" | tail -1
