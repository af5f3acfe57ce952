#!/usr/bin/env python3
"""moeckpt.load_hf_checkpoint against NeMo Automodel's own load path, into Automodel 0.7.0's real
MiMoV2FlashForCausalLM on CPU: same input, same machine, same run.

    .venv-py/bin/python bench/load_into_model.py [--work /tmp/moeckpt-loadbench] [--experts 64]
        [--repeat 3] [--out docs/bench/load-latest.md]

The input is `moeckpt.synth(preset "full", layers 2, experts E, vocab 4096, seed 0)` (the 64-expert
full preset of bench/e2e.py). Every measurement runs in a fresh subprocess (for 2 processes: a
torchrun job, gloo); the model is built first (not timed), then the load is timed inside the child;
peak RSS is measured from outside with wait4() (for torchrun: the largest process of the job).

Rows:
  automodel         load_file of every shard + the model's state_dict_adapter.from_hf + load_state_dict
  moeckpt           moeckpt.load_hf_checkpoint(model, DIR, compat="automodel")
  moeckpt default   moeckpt.load_hf_checkpoint(model, DIR)
  moeckpt 2 procs   torchrun --nproc-per-node 2: each rank loads its half of the experts (plain EP-local
                    tensors with a device mesh) and the replicated rest
After the timed part the automodel and compat rows' parameters are hashed: they must be identical.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from bench_support import run_measured  # noqa: E402
GIB = 1 << 30

CHILD = r'''
import hashlib, json, os, sys, time
mode, hf_dir, repo = sys.argv[1], sys.argv[2], sys.argv[3]
import torch
import moeckpt
from nemo_automodel.components.models.common import BackendConfig
from nemo_automodel.components.models.mimo_v2_flash.config import MiMoV2FlashConfig
from nemo_automodel.components.models.mimo_v2_flash.model import MiMoV2FlashForCausalLM

with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
    cfg = json.load(f)
cfg.pop("quantization_config", None)
backend = BackendConfig(attn="sdpa", linear="torch", rms_norm="torch", experts="torch",
                        dispatcher="torch", enable_hf_state_dict_adapter=True)
rank = int(os.environ.get("RANK", "0"))
world = int(os.environ.get("WORLD_SIZE", "1"))
if mode == "moeckpt_ep":
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("ep",))
with torch.device("meta"):
    model = MiMoV2FlashForCausalLM.from_config(MiMoV2FlashConfig(**cfg), backend=backend)
model = model.to_empty(device="cpu")
dests = model.state_dict()
if mode == "moeckpt_ep":  # the rank's experts only (Automodel's EP split), the rest whole
    n = int(cfg["n_routed_experts"])
    q, rem = divmod(n, world)
    first = rank * q + min(rank, rem)
    count = q + (rank < rem)
    dests = {k: (torch.empty((count, *v.shape[1:]), dtype=v.dtype) if k.endswith(("gate_and_up_projs", "down_projs")) else v)
             for k, v in dests.items()}

sys.path.insert(0, os.path.join(repo, "bench"))
from bench_support import load_hf_tensors as load_all

t0 = time.perf_counter()
if mode == "automodel":
    native = model.state_dict_adapter.from_hf(load_all(hf_dir))
    model.load_state_dict(native, strict=False)
    del native
elif mode == "moeckpt":
    moeckpt.load_hf_checkpoint(model, hf_dir, compat="automodel")
elif mode == "moeckpt_default":
    moeckpt.load_hf_checkpoint(model, hf_dir)
elif mode == "moeckpt_ep":
    report = moeckpt.load_hf_checkpoint(dests, hf_dir, compat="automodel", device_mesh=mesh)
else:
    raise SystemExit("unknown mode " + mode)
t1 = time.perf_counter()
out = {"load_s": t1 - t0, "rank": rank}
if mode in ("automodel", "moeckpt"):
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.contiguous().view(-1).view(torch.uint8).numpy())  # no copy of the bytes
    out["sha256"] = h.hexdigest()
if mode == "moeckpt_ep":
    dist.destroy_process_group()
print(json.dumps(out))
'''

ROWS = [
    ("automodel", "Automodel: load_file + from_hf + load_state_dict"),
    ("moeckpt", "moeckpt.load_hf_checkpoint(compat=\"automodel\")"),
    ("moeckpt_default", "moeckpt.load_hf_checkpoint (default mode)"),
    ("moeckpt_ep", "moeckpt.load_hf_checkpoint, 2 processes (torchrun, gloo), EP 2"),
]


def run_child(script: Path, mode: str, hf_dir: Path) -> tuple[list, int]:
    cmd = [sys.executable, str(script), mode, str(hf_dir), str(REPO)]
    if mode == "moeckpt_ep":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
               *cmd[1:]]
    lines, rss, _cpu = run_measured(cmd, mode, dict(os.environ, OMP_NUM_THREADS="1"))
    return lines, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/moeckpt-loadbench")
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "docs" / "bench" / "load-latest.md"))
    args = ap.parse_args()
    import moeckpt

    work = Path(args.work)
    hf_dir = work / f"hf-full-e{args.experts}"
    if not (hf_dir / "model.safetensors.index.json").exists():
        work.mkdir(parents=True, exist_ok=True)
        print(f"synthesizing {hf_dir} ...", flush=True)
        moeckpt.synth(hf_dir, "full", layers=2, experts=args.experts, vocab=4096, seed=0)
    script = work / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    runs: dict = {m: [] for m, _ in ROWS}
    hashes: dict = {}
    for i in range(args.repeat):
        for mode, _ in ROWS:
            lines, rss = run_child(script, mode, hf_dir)
            load_s = max(x["load_s"] for x in lines)
            runs[mode].append((load_s, rss))
            if "sha256" in lines[0]:
                hashes.setdefault(mode, lines[0]["sha256"])
            print(f"round {i + 1} {mode}: {load_s:.2f} s, peak RSS {rss / GIB:.2f} GiB", flush=True)
    med = {m: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for m, rs in runs.items()}
    ref_s, ref_rss = med["automodel"]
    in_bytes = sum(f.stat().st_size for f in hf_dir.glob("*.safetensors"))
    lines = [f"# Loading into Automodel's MiMoV2FlashForCausalLM ({args.experts} experts, {in_bytes / GIB:.2f} GiB FP8)", "",
             f"`{' '.join([sys.executable, *sys.argv])}`; medians of {args.repeat} rounds; load time inside the "
             "child (model built on `meta` then `to_empty`, not timed), peak RSS from wait4 (largest process).", "",
             "| path | load time | peak RSS | speed-up | memory |", "|---|---|---|---|---|"]
    for mode, label in ROWS:
        s, rss = med[mode]
        lines.append(f"| {label} | {s:.2f} s | {rss / GIB:.2f} GiB | {ref_s / s:.1f}x | {rss / ref_rss:.2f}x |")
    lines += ["", f"Parameters identical (SHA-256 of every parameter, automodel vs compat): "
              f"{hashes.get('automodel') == hashes.get('moeckpt')}"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0 if hashes.get("automodel") == hashes.get("moeckpt") else 1


if __name__ == "__main__":
    sys.exit(main())
