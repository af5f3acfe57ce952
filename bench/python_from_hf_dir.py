#!/usr/bin/env python3
"""moeckpt.from_hf_dir against the reference path (safetensors load_file + NeMo Automodel's
MiMoV2FlashStateDictAdapter.from_hf), same input, same machine, same run.

    .venv-py/bin/python bench/python_from_hf_dir.py [--work /tmp/moeckpt-pybench] [--experts 64]
        [--repeat 3] [--out docs/bench/python-latest.md] [--json docs/bench/python-latest.json] [--keep]

Needs a Python with the moeckpt package and the reference installed (scripts/test_python.sh makes
one: .venv-py). The input is synthesized with moeckpt.synth(preset "full", layers 2, experts E, vocab
4096, seed 0), the same as `moeckpt synth --preset full --layers 2 --experts E --vocab 4096` in
bench/e2e.py. Every measurement runs in a fresh subprocess; its wall time is taken inside the child
around the work only (imports excluded, shown apart), its peak RSS from wait4() of that child
(ru_maxrss: the whole process, torch included). Reported per row: the median of --repeat runs, taken in
rounds (every path once per round) so that background load hits all paths alike.

Rows:
  reference         load_file of every shard + Automodel from_hf (EP 1, bf16), as bench/e2e.py
  adapter.from_hf   load_file of every shard + moeckpt.MiMoV2FlashStateDictAdapter(cfg).from_hf
  from_hf_dir       moeckpt.from_hf_dir(DIR)                      (default mode)
  from_hf_dir compat  moeckpt.from_hf_dir(DIR, compat="automodel") (its per-tensor SHA-256 must equal
                    the reference's: checked after the timed part)
  from_hf_dir EP 0/8  moeckpt.from_hf_dir(DIR, ep_rank=0, ep_size=8)
The page cache is warm (the input was just written or read), as in bench/e2e.py.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from bench_support import run_measured  # noqa: E402
GIB = 1 << 30
TARGET_SPEEDUP = 10.0

CHILD = r'''
import hashlib, json, os, sys, time
t_start = time.perf_counter()
mode, hf_dir, repo, digest = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
import torch
import safetensors.torch
import moeckpt
sys.path.insert(0, os.path.join(repo, "tools"))

sys.path.insert(0, os.path.join(repo, "bench"))
from bench_support import load_hf_tensors as load_all

with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
    cfg = json.load(f)
if mode == "reference":
    from make_goldens import make_adapter   # the adapter exactly as MiMoV2FlashForCausalLM builds it
    adapter = make_adapter(cfg)
t_imported = time.perf_counter()

t0 = time.perf_counter()
if mode == "reference":
    sd = load_all(hf_dir)
    native = adapter.from_hf(sd, device_mesh=None)
elif mode == "adapter":
    sd = load_all(hf_dir)
    native = moeckpt.MiMoV2FlashStateDictAdapter(cfg).from_hf(sd)
elif mode == "dir":
    native = moeckpt.from_hf_dir(hf_dir)
elif mode == "dir_compat":
    native = moeckpt.from_hf_dir(hf_dir, compat="automodel")
elif mode == "dir_ep8":
    native = moeckpt.from_hf_dir(hf_dir, ep_rank=0, ep_size=8)
else:
    raise SystemExit("unknown mode " + mode)
t1 = time.perf_counter()
out = {"import_s": t_imported - t_start, "total_s": t1 - t0, "tensors_out": len(native),
       "bytes_out": sum(v.numel() * v.element_size() for v in native.values()),
       "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
if digest:
    out["sha256"] = {k: hashlib.sha256(v.contiguous().view(-1).view(torch.uint8).numpy()).hexdigest()
                     for k, v in native.items()}
    out["dtypes"] = {k: str(v.dtype) for k, v in native.items()}
print(json.dumps(out))
'''

ROWS = [
    ("reference", "reference: load_file + Automodel from_hf"),
    ("adapter", "load_file + moeckpt adapter.from_hf"),
    ("dir", "moeckpt.from_hf_dir"),
    ("dir_compat", "moeckpt.from_hf_dir(compat=\"automodel\")"),
    ("dir_ep8", "moeckpt.from_hf_dir(ep_rank=0, ep_size=8)"),
]


def run_child(py: str, script: str, mode: str, hf_dir: Path, digest: bool) -> tuple[dict, int, float]:
    """Runs one measurement; returns its JSON, the child's peak RSS in bytes and its CPU seconds."""
    lines, rss, cpu = run_measured([py, script, mode, str(hf_dir), str(REPO), "1" if digest else "0"], mode)
    return lines[-1], rss, cpu


def machine() -> dict:
    cpu = ""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as f:
        mem = int(f.readline().split()[1]) * 1024
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {"cpu": cpu, "nproc": os.cpu_count(), "mem_bytes": mem, "python": platform.python_version(),
            "kernel": platform.release(), "git_head": head.stdout.strip()}


def fmt_b(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / (1 << 20):.0f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/moeckpt-pybench")
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "docs" / "bench" / "python-latest.md"))
    ap.add_argument("--json", default=str(REPO / "docs" / "bench" / "python-latest.json"))
    ap.add_argument("--keep", action="store_true", help="keep the synthesized input")
    args = ap.parse_args()

    import moeckpt  # the package under test, in this interpreter

    work = Path(args.work)
    hf_dir = work / f"hf-full-e{args.experts}"
    if not (hf_dir / "model.safetensors.index.json").exists():
        shutil.rmtree(hf_dir, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        print(f"synthesizing {hf_dir} ...", flush=True)
        moeckpt.synth(hf_dir, "full", layers=2, experts=args.experts, vocab=4096, seed=0)
    in_bytes = sum(f.stat().st_size for f in hf_dir.glob("*.safetensors"))
    script = work / "child.py"
    script.write_text(CHILD, encoding="utf-8")

    # Rounds: every path once per round, so that each sees the same background load.
    runs: dict = {mode: [] for mode, _ in ROWS}
    digests: dict = {}
    for i in range(args.repeat):
        for mode, _ in ROWS:
            digest = mode in ("reference", "dir_compat") and i == 0
            load_before = os.getloadavg()[0]
            data, rss, cpu = run_child(sys.executable, str(script), mode, hf_dir, digest)
            if digest:
                digests[mode] = (data.pop("sha256"), data.pop("dtypes"))
            data["peak_rss"] = rss
            data["cpu_s"] = cpu
            data["loadavg_1min"] = [load_before, os.getloadavg()[0]]
            runs[mode].append(data)
            print(f"round {i + 1} {mode}: {data['total_s']:.2f} s, peak RSS {fmt_b(rss)}, "
                  f"load {load_before:.1f}", flush=True)
    results: dict = {}
    for mode, _ in ROWS:
        rs = runs[mode]
        results[mode] = {
            "total_s": statistics.median(r["total_s"] for r in rs),
            "peak_rss": statistics.median(r["peak_rss"] for r in rs),
            "import_s": statistics.median(r["import_s"] for r in rs),
            "cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "tensors_out": rs[0]["tensors_out"], "bytes_out": rs[0]["bytes_out"],
            "runs": rs,
        }
    identical = digests["reference"] == digests["dir_compat"]
    ref = results["reference"]
    speedup = ref["total_s"] / results["dir"]["total_s"]
    facts = machine()
    facts.update(torch=results["reference"]["runs"][0]["torch"], torch_threads=results["reference"]["runs"][0]["torch_threads"])
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = " ".join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable,
                    "bench/python_from_hf_dir.py", *sys.argv[1:]])

    lines = [
        "# Python: `moeckpt.from_hf_dir` vs the reference path",
        "",
        f"Run of {when}, `{cmd}` (git {facts['git_head']}). Machine: {facts['cpu']}, {facts['nproc']} vCPUs, "
        f"{facts['mem_bytes'] / GIB:.1f} GiB RAM, Python {facts['python']}, torch {facts['torch']} "
        f"({facts['torch_threads']} threads), kernel {facts['kernel']}.",
        "",
        f"Input: `moeckpt.synth(DIR, \"full\", layers=2, experts={args.experts}, vocab=4096, seed=0)`, "
        f"{fmt_b(in_bytes)} of safetensors. Each row: a fresh subprocess per run, median of {args.repeat}; time "
        "inside the child around the work (imports excluded); peak RSS and CPU time (user+sys, imports "
        "included) of the whole child from wait4. "
        "Page cache warm. Rounds: every path once per round.",
        "",
        "| path | time (median) | all runs | speedup vs reference | peak RSS | child CPU (user+sys) | tensors out | bytes out |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, label in ROWS:
        r = results[mode]
        every = ", ".join(f"{x['total_s']:.2f}" for x in r["runs"])
        lines.append(f"| {label} | {r['total_s']:.2f} s | {every} | {ref['total_s'] / r['total_s']:.1f}x | "
                     f"{fmt_b(r['peak_rss'])} | {r['cpu_s']:.1f} s | {r['tensors_out']} | {fmt_b(r['bytes_out'])} |")
    loads = [x for r in results.values() for run in r["runs"] for x in run["loadavg_1min"]]
    lines += [
        "",
        f"`from_hf_dir` (default mode) vs reference: **{speedup:.1f}x** faster (target >= {TARGET_SPEEDUP:.0f}x: "
        f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}), peak RSS {fmt_b(results['dir']['peak_rss'])} vs "
        f"{fmt_b(ref['peak_rss'])}.",
        f"`from_hf_dir(compat=\"automodel\")` output identical to the reference (SHA-256 of every tensor, same "
        f"keys and dtypes): **{'yes' if identical else 'NO'}**.",
        "",
        f"1-minute load average during the runs: {min(loads):.1f} to {max(loads):.1f} on {facts['nproc']} vCPUs "
        "(other work shared the machine when above ~2; rounds interleave the paths so each sees similar load).",
        "",
        "The native state dict is returned in memory, so the RSS of the moeckpt rows includes the "
        "result itself (bytes out) plus torch; the reference holds the whole FP8 input, the dequantized "
        "copies and the grouped experts at once.",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump({"when": when, "command": cmd, "machine": facts, "input_bytes": in_bytes, "experts": args.experts,
                   "results": results, "identical_to_reference": identical, "speedup": speedup}, f, indent=1)
        f.write("\n")
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
