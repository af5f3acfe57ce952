"""What the Python benchmarks share: running a measurement in a child measured from outside, and
loading every tensor of an HF folder the way the reference path does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile


def load_hf_tensors(d: str) -> dict:
    """Every tensor of an HF checkpoint folder through safetensors' load_file (the reference's own
    first step), shards in name order."""
    import safetensors.torch

    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:  # a single-file checkpoint
        files = ["model.safetensors"]
    sd = {}
    for name in files:
        sd.update(safetensors.torch.load_file(os.path.join(d, name)))
    return sd


def run_measured(cmd: list, what: str, env: dict | None = None) -> tuple[list, int, float]:
    """Runs `cmd`, waits with wait4(): the JSON lines it printed, the peak RSS in bytes of its
    largest process (a launcher's children included) and its CPU seconds. A failure ends the
    benchmark with the child's stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code != 0:
            sys.stderr.write(err.read().decode(errors="replace"))
            raise SystemExit(f"{what}: child failed with exit code {code}")
        lines = [json.loads(x) for x in out.read().decode().splitlines() if x.startswith("{")]
        return lines, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime
