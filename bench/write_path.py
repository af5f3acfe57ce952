#!/usr/bin/env python3
"""The write path against the disk's floor: wall, user and system time of every writing command.

Python 3.11 standard library only.

    python3 bench/write_path.py [--moeckpt build/moeckpt] [--work /work/moeckpt-wp] [--repeat 5]
                                [--experts 64] [--tmpfs /dev/shm/moeckpt-wp] [--reference DIR]

Input: `moeckpt synth WORK/hf --preset full --layers 2 --experts E --vocab 4096` (made once, reused).
For each command, alternating with its floor, --repeat times (median reported):

  from-hf     moeckpt from-hf WORK/hf OUT --quiet
  to-hf       moeckpt to-hf WORK/native OUT --quiet          (WORK/native: a from-hf output)
  dequantize  moeckpt dequantize WORK/hf OUT --quiet
  quantize    moeckpt quantize WORK/bf16 OUT --quiet         (WORK/bf16: a dequantize output)
  from-hf to tmpfs (--tmpfs): the same from-hf into a memory file system (no disk: the CPU side)

  floor       `cat` of the command's input files to /dev/null, then
              `head -c <the command's output bytes> /dev/zero > WORK/floor.bin && sync -f WORK/floor.bin`

The page cache is warm for the input (it was just written or read); `sync` runs, untimed, before every
timed step so that earlier dirty pages are not written back inside it. Wall, user and system time and
peak RSS come from wait4() on the child, i.e. from outside the process. With --reference DIR (outputs of
another build, one subfolder per command as this script names them), every output is compared byte for
byte (`cmp`) with it; --keep DIR keeps this run's outputs there for such a comparison.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], shell: bool = False) -> dict:
    """Runs cmd; wall from perf_counter, user/sys/peak RSS from wait4 (the child only)."""
    subprocess.run(["sync"], check=True)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd if not shell else ["bash", "-c", cmd[0]], stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}")
    return {"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime, "rss": ru.ru_maxrss * 1024}


def st_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.iterdir() if f.name.endswith(".safetensors"))


def inputs(d: Path) -> list[str]:
    return sorted(str(f) for f in d.iterdir() if f.name.endswith(".safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moeckpt", default=str(REPO / "build" / "moeckpt"))
    ap.add_argument("--work", default="/work/moeckpt-wp")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--tmpfs", default="/dev/shm/moeckpt-wp")
    ap.add_argument("--reference", default=None)
    ap.add_argument("--keep", default=None)
    a = ap.parse_args()
    exe, work = a.moeckpt, Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    hf = work / "hf"
    if not (hf / "config.json").exists():
        subprocess.run([exe, "synth", str(hf), "--preset", "full", "--layers", "2", "--experts",
                        str(a.experts), "--vocab", "4096"], check=True, stdout=subprocess.DEVNULL)
    for name, cmd, src in (("native", "from-hf", hf), ("bf16", "dequantize", hf)):
        if not (work / name / "config.json").exists():
            shutil.rmtree(work / name, ignore_errors=True)
            subprocess.run([exe, cmd, str(src), str(work / name), "--quiet"], check=True)
    commands = [
        ("from-hf", "from-hf", hf, work / "out"),
        ("to-hf", "to-hf", work / "native", work / "out"),
        ("dequantize", "dequantize", hf, work / "out"),
        ("quantize", "quantize", work / "bf16", work / "out"),
    ]
    if a.tmpfs:
        commands.append(("from-hf to tmpfs", "from-hf", hf, Path(a.tmpfs)))
    rows = []
    for label, cmd, src, out in commands:
        runs, floors = [], []
        out_bytes = 0
        for _ in range(a.repeat):
            shutil.rmtree(out, ignore_errors=True)
            runs.append(timed([exe, cmd, str(src), str(out), "--quiet"]))
            out_bytes = st_bytes(out)
            ref_label = cmd if "tmpfs" in label else label  # the same bytes as the disk's
            if a.keep and ref_label == label:
                keep = Path(a.keep) / label.replace(" ", "-")
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(out, keep)
            if a.reference:
                ref = Path(a.reference) / ref_label
                for f in sorted(ref.iterdir()):
                    subprocess.run(["cmp", str(f), str(out / f.name)], check=True)
            shutil.rmtree(out, ignore_errors=True)
            if "tmpfs" in label:
                continue
            floor = work / "floor.bin"
            floors.append(timed([f"cat {' '.join(inputs(src))} > /dev/null && head -c {out_bytes} /dev/zero "
                                 f"> {floor} && sync -f {floor}"], shell=True))
            floor.unlink()
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        fl = statistics.median(f["wall"] for f in floors) if floors else None
        rows.append((label, out_bytes, med, fl, [r["wall"] for r in runs], [f["wall"] for f in floors]))
        print(f"{label}: {med['wall']:.2f} s wall, {med['user']:.2f} user, {med['sys']:.2f} sys, "
              f"peak {med['rss'] / 2**20:.0f} MiB; floor {fl if fl is None else round(fl, 2)} s", file=sys.stderr)
    print(f"\nmoeckpt {exe}, input {hf} ({st_bytes(hf) / 1e9:.2f} GB), median of {a.repeat} alternating runs\n")
    print("| command | output | wall | user | system | peak RSS | floor | ratio | runs (wall) | floors (wall) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, ob, m, fl, rw, fw in rows:
        ratio = f"{m['wall'] / fl:.2f}x" if fl else "-"
        print(f"| {label} | {ob / 1e9:.2f} GB | {m['wall']:.2f} s | {m['user']:.2f} s | {m['sys']:.2f} s | "
              f"{m['rss'] / 2**20:.0f} MiB | {'-' if fl is None else f'{fl:.2f} s'} | {ratio} | "
              f"{', '.join(f'{x:.1f}' for x in rw)} | {', '.join(f'{x:.1f}' for x in fw)} |")


if __name__ == "__main__":
    main()
