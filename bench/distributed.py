#!/usr/bin/env python3
"""Distributed from-hf on one machine: 1, 2 and 4 workers (``--workers N --worker K``, started at
once) against one process, on the 64-expert full preset. Per worker: wall time and peak RSS measured
from outside (/usr/bin/time -f "%e %M"), bytes read and written from its closing report; the outputs are checked to be
byte-identical to the single-process folder.

    python3 bench/distributed.py [--cli build/moeckpt] [--work /tmp/moeckpt-dist] [--shard-size B]

The input is `moeckpt synth DIR --preset full --layers 2 --experts 64 --vocab 4096` (2.35 GiB of
FP8), made once. Workers get --threads max(1, cores / N), the share --distributed gives workers on
one node.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import time

REPORT = re.compile(r"read ([0-9.]+) GB, wrote ([0-9.]+) GB")


def digest(d: str) -> str:
    # In a child: the benchmark's own memory stays small (a forked worker starts with its RSS).
    return subprocess.run("sha256sum * | sort", shell=True, cwd=d, capture_output=True, text=True,
                          check=True).stdout


def run_workers(cmds: list, work: str) -> tuple[float, list]:
    """Starts every command at once, each under /usr/bin/time (wall time and peak RSS from outside);
    the wall time of the whole and, per command, (wall, peak RSS bytes, stdout)."""
    t0 = time.monotonic()
    stats = [os.path.join(work, f"time{i}") for i in range(len(cmds))]
    procs = [subprocess.Popen(["/usr/bin/time", "-f", "%e %M", "-o", st] + c, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c, st in zip(cmds, stats)]
    out = []
    for p, st in zip(procs, stats):
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed: {stderr}")
        with open(st) as f:
            wall, kib = f.read().split()[-2:]
        out.append((float(wall), int(kib) * 1024, stdout))
    return time.monotonic() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default="build/moeckpt")
    ap.add_argument("--work", default="/tmp/moeckpt-dist")
    ap.add_argument("--shard-size", default="200000000")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    cli = os.path.abspath(args.cli)
    os.makedirs(args.work, exist_ok=True)
    hf = os.path.join(args.work, "hf")
    if not os.path.exists(os.path.join(hf, "config.json")):
        subprocess.run([cli, "synth", hf, "--preset", "full", "--layers", "2", "--experts", "64", "--vocab", "4096"],
                       check=True, stdout=subprocess.DEVNULL)
    cores = os.cpu_count() or 1
    base = [cli, "from-hf", hf]
    opts = ["--shard-size", args.shard_size, "--quiet"]
    ref = os.path.join(args.work, "one")
    print(f"| workers | wall (whole run) | per worker: wall, peak RSS, read GB, wrote GB | identical |")
    print("|---|---|---|---|")
    for n in (0, 1, 2, 4):
        for _ in range(args.repeat):
            dst = ref if n == 0 else os.path.join(args.work, f"w{n}")
            shutil.rmtree(dst, ignore_errors=True)
            subprocess.run(["sync"], check=True)
            try:  # cold page cache: each run reads its input from the disk (root only)
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
            except OSError:
                pass
            if n == 0:
                cmds = [base + [dst] + opts]
            else:
                threads = str(max(1, cores // n))
                cmds = [base + [dst] + opts + ["--threads", threads, "--workers", str(n), "--worker", str(k)]
                        for k in range(n)]
            wall, per = run_workers(cmds, args.work)
            cells = []
            for w, rss, stdout in per:
                m = REPORT.search(stdout)
                cells.append(f"{w:.2f} s, {rss / 2**20:.0f} MiB, {m.group(1)}, {m.group(2)}")
            same = "reference" if n == 0 else ("yes" if digest(dst) == digest(ref) else "NO")
            label = "1 process" if n == 0 else f"{n}"
            print(f"| {label} | {wall:.2f} s | {'; '.join(cells)} | {same} |", flush=True)


if __name__ == "__main__":
    main()
