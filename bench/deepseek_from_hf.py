#!/usr/bin/env python3
"""from-hf of DeepSeek-V3-format checkpoints at the real layer shapes: moeckpt against NeMo Automodel's path.

    .venv-py/bin/python bench/deepseek_from_hf.py [--moeckpt build/moeckpt] [--work /tmp/moeckpt-dsbench]
        [--experts 32 256] [--reference-experts 32] [--repeat 2] [--out docs/bench/deepseek-latest.md]

Input per expert count E: `moeckpt synth DIR --preset deepseek-v3-full --layers 2 --experts E --vocab 4096
--mtp 0`: DeepSeek-V3's real dimensions (hidden 7168, 128 heads of latent attention with q_lora_rank 1536 and
kv_lora_rank 512, dense MLP 18432, experts 2048 wide, one shared expert), layer 0 dense and layer 1 MoE.

Rows, each a fresh child measured from outside (wall time around the child, peak RSS and CPU from wait4):
  moeckpt           `moeckpt from-hf DIR OUT --quiet` (OUT removed before each run, untimed; outputs are fsynced)
  moeckpt EP 0/8    `moeckpt from-hf DIR OUT --ep-size 8 --ep-rank 0 --quiet`
  automodel         load_file of every shard + DeepSeekV3StateDictAdapter.from_hf (as DeepseekV3ForCausalLM
                    builds it, bf16) + save_file of the result: the same work in Python; only for the
                    --reference-experts counts (its peak holds the FP8 input and the BF16 output at once: at 256
                    experts that is ~35 GB, more than this machine has)
The input is read once before the runs (page cache warm where input and output fit in memory; at 256
experts, 11.4 GiB in and 22.6 GiB out on a 23.5 GiB machine, every run reads from disk). Median of --repeat
runs.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from bench_support import run_measured  # noqa: E402

GIB = 1 << 30

CHILD = r'''
import json, os, sys, time
hf_dir, out_dir, repo = sys.argv[1], sys.argv[2], sys.argv[3]
import torch
import safetensors.torch
sys.path.insert(0, os.path.join(repo, "tools"))
sys.path.insert(0, os.path.join(repo, "bench"))
from make_deepseek_goldens import make_adapter
from bench_support import load_hf_tensors
with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
    cfg = json.load(f)
adapter = make_adapter(cfg)
t0 = time.perf_counter()
native = adapter.from_hf(load_hf_tensors(hf_dir))
os.makedirs(out_dir, exist_ok=True)
safetensors.torch.save_file({k: v.contiguous() for k, v in native.items()}, os.path.join(out_dir, "model.safetensors"))
print(json.dumps({"seconds": time.perf_counter() - t0, "tensors": len(native)}))
'''


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("*.safetensors"))


def timed(cmd: list, what: str) -> tuple[float, int, float]:
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    _lines, rss, cpu = run_measured(cmd, what)
    return time.perf_counter() - t0, rss, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moeckpt", type=Path, default=REPO / "build" / "moeckpt")
    ap.add_argument("--work", type=Path, default=Path("/tmp/moeckpt-dsbench"))
    ap.add_argument("--experts", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--reference-experts", type=int, nargs="*", default=[32])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "deepseek-latest.md")
    args = ap.parse_args()
    cli = str(args.moeckpt.resolve())
    rows = []
    for e in args.experts:
        hf = args.work / f"hf-e{e}"
        if not (hf / "model.safetensors.index.json").exists():
            shutil.rmtree(hf, ignore_errors=True)
            print(f"synthesizing {hf} ...", flush=True)
            subprocess.run([cli, "synth", str(hf), "--preset", "deepseek-v3-full", "--layers", "2", "--experts",
                            str(e), "--vocab", "4096", "--mtp", "0"], check=True, stdout=subprocess.DEVNULL)
        size = dir_bytes(hf)
        # Warm the page cache (untimed) so that no path pays for the first read from disk; an input
        # plus its output larger than memory (256 experts here) is read from disk by every run anyway.
        for f in sorted(hf.glob("*.safetensors")):
            with open(f, "rb") as fh:
                while fh.read(64 << 20):
                    pass
        out = args.work / "out"
        paths = [("moeckpt", [cli, "from-hf", str(hf), str(out), "--quiet"]),
                 ("moeckpt EP 0/8", [cli, "from-hf", str(hf), str(out), "--ep-size", "8", "--ep-rank", "0", "--quiet"])]
        if e in args.reference_experts:
            script = args.work / "child.py"
            script.write_text(CHILD, encoding="utf-8")
            paths.append(("automodel", [sys.executable, str(script), str(hf), str(out), str(REPO)]))
        runs: dict = {name: [] for name, _ in paths}
        for _ in range(args.repeat):
            for name, cmd in paths:
                shutil.rmtree(out, ignore_errors=True)
                wall, rss, cpu = timed(cmd, name)
                written = dir_bytes(out)
                runs[name].append((wall, rss, cpu, written))
                print(f"E={e} {name}: {wall:.2f} s, peak RSS {rss / GIB:.2f} GiB, CPU {cpu:.1f} s, "
                      f"wrote {written / GIB:.2f} GiB", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        for name, r in runs.items():
            rows.append((e, size, name, statistics.median(x[0] for x in r), max(x[1] for x in r),
                         statistics.median(x[2] for x in r), r[0][3], [x[0] for x in r]))
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# from-hf at DeepSeek-V3 layer shapes\n",
             f"Run of {when}: `{' '.join(sys.argv)}` on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs. Median of {args.repeat}; peak RSS from wait4 (the largest run).\n",
             "| experts | input | path | wall | runs | peak RSS | CPU | written | speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    ref = {e: w for e, _s, n, w, *_ in rows if n == "automodel"}
    for e, size, name, wall, rss, cpu, written, all_runs in rows:
        speed = f"{ref[e] / wall:.1f}x" if e in ref else "-"
        lines.append(f"| {e} | {size / GIB:.2f} GiB | {name} | {wall:.2f} s | {', '.join(f'{x:.2f}' for x in all_runs)} "
                     f"| {rss / GIB:.2f} GiB | {cpu:.1f} s | {written / GIB:.2f} GiB | {speed} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
