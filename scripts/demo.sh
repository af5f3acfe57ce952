#!/usr/bin/env bash
# Quick start, part 1: install, build, and run a demo on the built-in tiny checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh release
rm -rf demo && mkdir -p demo
set -x
./build/moeckpt synth demo/tiny --preset tiny --seed 1
./build/moeckpt inspect demo/tiny
./build/moeckpt inspect demo/tiny --json > demo/tiny-inspect.json
head -c 300 demo/tiny-inspect.json; echo
./build/moeckpt from-hf demo/tiny demo/native
./build/moeckpt from-hf demo/tiny demo/native-rank1of3 --ep-size 3 --ep-rank 1
./build/moeckpt to-hf demo/native demo/hf-again
./build/moeckpt verify demo/tiny demo/hf-again
./build/moeckpt to-hf demo/native demo/hf-bf16 --quant none
