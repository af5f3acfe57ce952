#!/usr/bin/env python3
"""How `moeckpt inspect --headers-only` scales with the number of header entries (standard library only).

    python3 bench/header_scaling.py [build/moeckpt] [--counts 10000 100000 1000000] [--work /tmp/moeckpt-headers]

For each count N it writes a single-file checkpoint (`model.safetensors`, no config.json) whose header holds N
tensors: zero-size U8 tensors (`"shape": [0]`, the cheapest entry a hostile file can repeat) and, separately,
1-element BF16 tensors, then times `inspect --headers-only` from outside (wall clock around the child, peak RSS from
wait4). Linear parsing shows as time and memory growing with N, not N^2.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path


def write_checkpoint(d: Path, n: int, kind: str) -> int:
    d.mkdir(parents=True, exist_ok=True)
    header = {}
    offset = 0
    for i in range(n):
        if kind == "empty":
            header[f"t.{i}"] = {"dtype": "U8", "shape": [0], "data_offsets": [offset, offset]}
        else:
            header[f"model.layers.{i}.weight"] = {"dtype": "BF16", "shape": [1], "data_offsets": [offset, offset + 2]}
            offset += 2
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(d / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(b"\0" * offset)
    return len(text)


def measure(moeckpt: str, d: Path) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    p = subprocess.Popen([moeckpt, "inspect", str(d), "--headers-only"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.stderr.close()
    return wall, ru.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("moeckpt", nargs="?", default="build/moeckpt")
    ap.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--work", default="/tmp/moeckpt-headers")
    a = ap.parse_args()
    print(f"{'entries':>10} {'kind':>6} {'header MB':>10} {'wall s':>8} {'peak RSS MiB':>13} {'exit':>5}")
    for n in a.counts:
        for kind in ("empty", "bf16"):
            d = Path(a.work) / f"{kind}-{n}"
            size = write_checkpoint(d, n, kind)
            wall, rss, code = measure(a.moeckpt, d)
            print(f"{n:>10} {kind:>6} {size / 1e6:>10.1f} {wall:>8.2f} {rss / 2**20:>13.0f} {code:>5}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
