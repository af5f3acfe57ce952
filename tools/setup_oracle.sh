#!/usr/bin/env bash
# Set up the reference oracle: NeMo Automodel's MiMoV2FlashStateDictAdapter in a private venv
# (used by tools/make_goldens.py). Idempotent: re-running reuses the venv; pip skips what is installed.
#
# Usage: tools/setup_oracle.sh                 (venv at <repo>/.venv-oracle, gitignored)
#        ORACLE_VENV=/path tools/setup_oracle.sh
# Overrides: PYTHON, TORCH_SPEC, AUTOMODEL_SPEC, TRANSFORMERS_SPEC.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ORACLE_VENV:-$ROOT/.venv-oracle}"
PY="${PYTHON:-python3}"

TORCH_SPEC="${TORCH_SPEC:-torch==2.11.*}"
AUTOMODEL_SPEC="${AUTOMODEL_SPEC:-nemo-automodel==0.7.0}"
# nemo-automodel 0.7.0 declares transformers==5.18.0
TRANSFORMERS_SPEC="${TRANSFORMERS_SPEC:-transformers==5.18.0}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# pip install, quiet; hides the resolver's complaints about nemo-automodel's undeclared (GPU/training) deps,
# which we deliberately do not install. Fails (and shows the log) if pip fails.
pipq() {
  local log
  log="$(mktemp)"
  if ! "$VPY" -m pip --disable-pip-version-check -q install "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  grep -v -e "dependency resolver does not currently" -e "which is not installed" -e "which is incompatible" "$log" || true
  rm -f "$log"
}

pipq --upgrade pip
# torch from PyPI: the default Linux wheel (+cu130); it pulls the nvidia-* CUDA wheels, harmless on CPU.
pipq "$TORCH_SPEC" safetensors numpy
# nemo-automodel without its dependency tree (megatron-fsdp, torchao, quack-kernels, datasets, ...), then only what
# the import chain of components.models.mimo_v2_flash.state_dict_adapter needs: transformers (+ huggingface_hub,
# pulled by it), pyyaml, pydantic, fsspec.
pipq --no-deps "$AUTOMODEL_SPEC"
pipq "$TRANSFORMERS_SPEC" pyyaml pydantic fsspec

"$VPY" - <<'PYEOF'
import importlib, sys
from importlib.metadata import version
import torch, safetensors
m = importlib.import_module("nemo_automodel.components.models.mimo_v2_flash.state_dict_adapter")
importlib.import_module("torch.testing._internal.distributed.fake_pg")  # used for EP goldens (--ep-mode fakepg)
print("oracle OK:", "python", sys.version.split()[0], "| torch", torch.__version__, "| safetensors", safetensors.__version__,
      "| nemo-automodel", version("nemo-automodel"), "| transformers", version("transformers"),
      "| cpu", torch.backends.cpu.get_cpu_capability(), "|", m.MiMoV2FlashStateDictAdapter.__name__)
PYEOF
