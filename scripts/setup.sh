#!/usr/bin/env bash
# Installs what moeckpt needs to build and test (Debian 12 packages). Idempotent; run as root.
set -euo pipefail
packages=(build-essential cmake ninja-build g++ clang libclang-rt-14-dev
          nlohmann-json3-dev libcli11-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev libssl-dev
          libxxhash-dev libre2-dev pkg-config
          python3 python3-venv python3-dev valgrind
          openmpi-bin ccache)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
