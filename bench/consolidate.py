#!/usr/bin/env python3
"""moeckpt consolidate against torch's and NeMo Automodel's consolidators and the disk's floor.

    python3 bench/consolidate.py [--moeckpt build/moeckpt] [--python .venv-py/bin/python]
                                 [--work /work/moeckpt-consolidate] [--repeat 3] [--experts 32]

Input (made once, reused): `moeckpt synth WORK/hf --preset full --layers 2 --experts E --vocab 4096`
(real MiMo-V2-Flash layer shapes), `moeckpt dequantize` to BF16 (WORK/bf16), saved by torch's
HuggingFaceStorageWriter(save_distributed=True) under `torchrun --nproc-per-node 4` with gloo
(tests/python/dcp_sharded_save.py: experts on their owner rank, o_proj/down_proj split by columns,
other matrices by rows, vectors replicated; 4 output files) into WORK/save.

Measured, alternating, median of --repeat runs, wall time and peak RSS from wait4() on the child
(outside the process), `sync` untimed before each step:

  moeckpt      moeckpt consolidate WORK/save OUT --quiet
  torch        torch 2.11's consolidate_safetensors_files(WORK/save, OUT, mapping, num_threads=T)
  automodel    Automodel 0.7.0's backport of it, the same call (its consolidate.sh's NUM_THREADS)
  floor        `cat` of the save's files to /dev/null, then `head -c <output bytes> /dev/zero >
               WORK/floor.bin && sync -f WORK/floor.bin`
  floor direct the same cat, then `dd if=/dev/zero of=WORK/floor.bin bs=1M oflag=direct conv=fsync`
               (large O_DIRECT writes, as moeckpt writes large pieces); the faster floor is used
  fp8 one pass moeckpt consolidate WORK/save OUT --quant block --quiet
  fp8 two pass moeckpt consolidate, then moeckpt quantize of its output

The references run at T = 1 and 2 threads (this machine's cores); the faster is the verdict's.
Every output is checked against moeckpt's (same tensors, bytes and files) once.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict | None = None) -> dict:
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return {"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime, "rss": ru.ru_maxrss * 1024}


def st_files(d: Path) -> list[Path]:
    return sorted(f for f in d.iterdir() if f.name.endswith(".safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--moeckpt", default=str(REPO / "build" / "moeckpt"))
    ap.add_argument("--python", default=str(REPO / ".venv-py" / "bin" / "python"))
    ap.add_argument("--work", default="/work/moeckpt-consolidate")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--out", default=str(REPO / "docs" / "bench" / "consolidate-latest.md"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    m = a.moeckpt
    hf, bf16, save = work / "hf", work / "bf16", work / "save"
    if not (save / ".done").exists():
        shutil.rmtree(save, ignore_errors=True)
        if not hf.exists():
            subprocess.run([m, "synth", str(hf), "--preset", "full", "--layers", "2", "--experts",
                            str(a.experts), "--vocab", "4096"], check=True)
        if not bf16.exists():
            subprocess.run([m, "dequantize", str(hf), str(bf16), "--quiet"], check=True)
        spec = work / "spec.json"
        spec.write_text(json.dumps({"source": str(bf16), "files": 4, "no_reference": True,
                                    "config": json.loads((bf16 / "config.json").read_text())}))
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run([a.python, "-m", "torch.distributed.run", "--nproc-per-node", str(a.ranks),
                        str(REPO / "tests" / "python" / "dcp_sharded_save.py"), str(spec), str(save)],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (save / ".done").write_text("")
    mapping = {}
    for f in st_files(save):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        index = int(f.name.split("-model-")[1][:5])
        for k in header:
            if k != "__metadata__":
                mapping[k] = index
    (work / "mapping.json").write_text(json.dumps(mapping))
    in_bytes = sum(f.stat().st_size for f in st_files(save))

    ref_script = (
        "import json, sys, importlib\n"
        "mod = importlib.import_module(sys.argv[1])\n"
        "mod.consolidate_safetensors_files(sys.argv[2], sys.argv[3], json.load(open(sys.argv[4])),"
        " num_threads=int(sys.argv[5]))\n")
    mods = {"torch": "torch.distributed.checkpoint._consolidate_hf_safetensors",
            "automodel": "nemo_automodel.components.checkpoint._backports.consolidate_hf_safetensors"}
    out = work / "out"
    runs: dict[str, list[dict]] = {}

    def run(name: str, cmd: list[str], fresh: bool = True, env: dict | None = None) -> None:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
            if name.startswith(("torch", "automodel")):
                out.mkdir()
        runs.setdefault(name, []).append(timed(cmd, env))

    out_bytes = 0
    env1 = dict(os.environ, OMP_NUM_THREADS="1")
    for r in range(a.repeat):
        run("moeckpt", [m, "consolidate", str(save), str(out), "--quiet"])
        out_bytes = sum(f.stat().st_size for f in st_files(out))
        if r == 0:
            keep = work / "moeckpt-out"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(out, keep)
        floor = work / "floor.bin"
        cmd = (f"cat {' '.join(str(f) for f in st_files(save))} > /dev/null && head -c {out_bytes} "
               f"/dev/zero > {floor} && sync -f {floor}")
        run("floor", ["bash", "-c", cmd], fresh=False)
        floor.unlink()
        # The same bytes through large O_DIRECT writes (how moeckpt writes big pieces): the faster
        # floor is the verdict's.
        mib = -(-out_bytes // (1 << 20))
        cmd = (f"cat {' '.join(str(f) for f in st_files(save))} > /dev/null && dd if=/dev/zero of={floor} "
               f"bs=1M count={mib} oflag=direct conv=fsync status=none")
        run("floor direct", ["bash", "-c", cmd], fresh=False)
        floor.unlink()
        for ref in ("torch", "automodel"):
            for t in (1, 2):
                run(f"{ref} T={t}", [a.python, "-c", ref_script, mods[ref], str(save), str(out),
                                     str(work / "mapping.json"), str(t)], env=env1)
                if r == 0 and t == 2:
                    check = subprocess.run(
                        [a.python, "-c",
                         "import sys\nfrom safetensors.torch import load_file\nimport glob\n"
                         "def load(d):\n  o={}\n  [o.update({k:(v,f.split('/')[-1]) for k,v in load_file(f).items()}) "
                         "for f in glob.glob(d+'/*.safetensors')]\n  return o\n"
                         "a,b=load(sys.argv[1]),load(sys.argv[2])\n"
                         "assert a.keys()==b.keys()\n"
                         "assert all(a[k][1]==b[k][1] and a[k][0].dtype==b[k][0].dtype and a[k][0].shape==b[k][0].shape "
                         "and a[k][0].view(-1).view(__import__('torch').uint8).equal(b[k][0].view(-1).view(__import__('torch').uint8)) for k in a)\n"
                         "print('same', len(a))", str(keep), str(out)], capture_output=True, text=True)
                    print(f"{ref}: {check.stdout.strip() or check.stderr.strip()[-500:]}", file=sys.stderr)
        run("fp8 one pass", [m, "consolidate", str(save), str(out), "--quant", "block", "--quiet"])
        shutil.rmtree(work / "q", ignore_errors=True)
        run("fp8 two pass", ["bash", "-c", f"rm -rf {out} {work / 'q'} && {m} consolidate {save} {out} --quiet && "
                             f"{m} quantize {out} {work / 'q'} --quiet"], fresh=False)
        print(f"round {r + 1}/{a.repeat} done", file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work / "q", ignore_errors=True)

    med = {k: {f: statistics.median(x[f] for x in v) for f in ("wall", "user", "sys", "rss")}
           for k, v in runs.items()}
    floor_name = min(("floor", "floor direct"), key=lambda k: med[k]["wall"])
    fastest_ref = min((k for k in med if k.startswith(("torch", "automodel"))), key=lambda k: med[k]["wall"])
    lines = [
        f"# consolidate: {in_bytes / 1e9:.2f} GB sharded save ({a.ranks} ranks, torch's writer) -> "
        f"{out_bytes / 1e9:.2f} GB HF checkpoint",
        "",
        f"`python3 bench/consolidate.py --repeat {a.repeat} --experts {a.experts}`; median of {a.repeat}; "
        "wall time and peak RSS from wait4() on the child process.",
        "",
        "| what | wall s | user s | sys s | peak RSS MiB | vs floor | vs moeckpt |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k, v in med.items():
        lines.append(f"| {k} | {v['wall']:.2f} | {v['user']:.2f} | {v['sys']:.2f} | {v['rss'] / 2**20:.0f} | "
                     f"{v['wall'] / med[floor_name]['wall']:.2f}x | {v['wall'] / med['moeckpt']['wall']:.2f}x |")
    mo = med["moeckpt"]
    lines += [
        "",
        f"- moeckpt / floor ({floor_name}): {mo['wall'] / med[floor_name]['wall']:.2f} (target <= 1.2)",
        f"- moeckpt / fastest reference ({fastest_ref}): {mo['wall'] / med[fastest_ref]['wall']:.2f} (target <= 0.5)",
        f"- moeckpt peak RSS: {mo['rss'] / 2**20:.0f} MiB (target <= 256)",
        f"- FP8 in one pass / consolidate then quantize: "
        f"{med['fp8 one pass']['wall'] / med['fp8 two pass']['wall']:.2f}",
    ]
    text = "\n".join(lines) + "\n"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
