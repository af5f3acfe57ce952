#!/usr/bin/env python3
"""End-to-end benchmark of moeckpt against the I/O floor and NeMo Automodel's adapter.

Python 3.11 standard library only. The Automodel reference runs as a subprocess under the oracle venv
(`.venv-oracle/bin/python`, see tools/setup_oracle.sh) from a small script embedded below.

    python3 bench/e2e.py [--moeckpt build-bench/moeckpt] [--work /tmp/moeckpt-e2e] [--repeat 3]
                         [--experts 64 32] [--drop-caches] [--no-reference]
                         [--out docs/bench/e2e-latest.md] [--json docs/bench/e2e-latest.json]

For every expert count E (default 64 and 32) it synthesizes (or reuses) an input with
`moeckpt synth DIR --preset full --layers 2 --experts E --vocab 4096`, then measures, each number the
median of --repeat runs:

  from-hf      `moeckpt from-hf IN OUT --quiet` (OUT removed before each run, untimed)
  to-hf        `moeckpt to-hf NATIVE OUT --quiet` (NATIVE = the from-hf output)
  EP 0 of 8    `moeckpt from-hf IN OUT --ep-size 8 --ep-rank 0 --quiet`
  floors       read  = `cat <every input .safetensors> > /dev/null`
               write = `dd if=/dev/zero of=WORK/floor.bin bs=64M count=BYTES iflag=count_bytes conv=fsync`
                       with BYTES = the command's total output .safetensors bytes (exact byte count, one
                       file, fsync at the end: moeckpt also fsyncs every output shard)
               from-hf floor = read(HF input) + write(native-sized); to-hf floor = read(native) + write(HF-sized)
  peak RSS     "Maximum resident set size" of `/usr/bin/time -v`
  reference    safetensors.torch.load_file of every shard + MiMoV2FlashStateDictAdapter.from_hf (EP 1,
               device_mesh None, bf16), timed inside the subprocess; peak RSS of the subprocess.

Wall times are measured by this driver around the child process (perf_counter), `sync` is run (untimed)
before every timed step so earlier dirty pages are not written back inside it. Without --drop-caches the
page cache is warm (inputs were just written or read); with it, `sync; echo 3 > /proc/sys/vm/drop_caches`
runs before every timed step (needs root; whether it took effect is reported).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30

TARGETS = {
    "from_hf_floor_ratio": 1.3,
    "to_hf_floor_ratio": 1.5,
    "ep_ratio": 0.3,
    "rss_bytes": 256 << 20,
    "rss_growth": 1.10,
    "speedup": 10.0,
    "mem_ratio": 0.1,
}

# -------------------------------------------------------------------------------------------------
# Reference (runs under .venv-oracle/bin/python)
# -------------------------------------------------------------------------------------------------

REFERENCE_SCRIPT = r'''
import json, os, sys, time
t_start = time.perf_counter()
hf_dir, repo = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(repo, "tools"))
import torch
import safetensors.torch
from importlib.metadata import version
from make_goldens import make_adapter   # builds the adapter exactly as MiMoV2FlashForCausalLM does
t_imported = time.perf_counter()

with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
    cfg = json.load(f)
index = os.path.join(hf_dir, "model.safetensors.index.json")
if os.path.isfile(index):
    with open(index, encoding="utf-8") as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
else:
    files = sorted(n for n in os.listdir(hf_dir) if n.endswith(".safetensors"))

t0 = time.perf_counter()
sd = {}
for name in files:
    sd.update(safetensors.torch.load_file(os.path.join(hf_dir, name)))
t1 = time.perf_counter()
n_in = len(sd)
adapter = make_adapter(cfg)
adapter.dtype = torch.bfloat16
native = adapter.from_hf(sd, device_mesh=None)
t2 = time.perf_counter()

out_bytes = sum(v.numel() * v.element_size() for v in native.values())
print(json.dumps({
    "import_s": t_imported - t_start,
    "load_s": t1 - t0,
    "convert_s": t2 - t1,
    "total_s": t2 - t0,
    "tensors_in": n_in,
    "tensors_out": len(native),
    "bytes_out": out_bytes,
    "torch": torch.__version__,
    "nemo_automodel": version("nemo_automodel"),
    "safetensors": version("safetensors"),
    "torch_threads": torch.get_num_threads(),
    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
}))
'''

# -------------------------------------------------------------------------------------------------
# Helpers
# -------------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def st_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.endswith(".safetensors")) if d.is_dir() else []


def st_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in st_files(d))


def cached_kib() -> int:
    m = re.search(r"^Cached:\s+(\d+) kB", read_text("/proc/meminfo"), re.M)
    return int(m.group(1)) if m else -1


def mem_available() -> int:
    m = re.search(r"^MemAvailable:\s+(\d+) kB", read_text("/proc/meminfo"), re.M)
    return int(m.group(1)) * 1024 if m else 0


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, div in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def fmt_s(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f} s"


def fmt_x(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}x"


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


class Env:
    def __init__(self, drop_caches: bool):
        self.drop_caches = drop_caches
        self.drop_ok: bool | None = None
        self.drop_note = "not requested (page cache warm)"

    def probe_drop(self) -> None:
        if not self.drop_caches:
            return
        before = cached_kib()
        ok = self._drop()
        after = cached_kib()
        self.drop_ok = ok and after < before
        if not ok:
            self.drop_note = "requested but /proc/sys/vm/drop_caches is not writable: ran warm"
            self.drop_caches = False
        else:
            self.drop_note = (f"requested, worked: page cache {before / 1048576:.2f} GiB -> "
                              f"{after / 1048576:.2f} GiB on the probe; dropped before every timed step")
        log(self.drop_note)

    @staticmethod
    def _drop() -> bool:
        subprocess.run(["sync"], check=False)
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            return True
        except OSError:
            return False

    def before_timed(self) -> None:
        subprocess.run(["sync"], check=False)
        if self.drop_caches:
            self._drop()


def timed(env: Env, cmd: list[str]) -> tuple[float, int | None, float | None, str]:
    """Runs cmd under /usr/bin/time -v; returns (wall seconds, peak RSS bytes, user+sys CPU seconds, stdout)."""
    env.before_timed()
    full = ["/usr/bin/time", "-v", *cmd]
    t0 = time.perf_counter()
    p = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"command failed (rc {p.returncode}): {sh(cmd)}\n{p.stderr[-3000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    peak = int(m.group(1)) * 1024 if m else None
    u = re.search(r"User time \(seconds\): ([\d.]+)", p.stderr)
    k = re.search(r"System time \(seconds\): ([\d.]+)", p.stderr)
    cpu = float(u.group(1)) + float(k.group(1)) if u and k else None
    return wall, peak, cpu, p.stdout


def rmtree(p: Path) -> None:
    if p.exists():
        shutil.rmtree(p)


# -------------------------------------------------------------------------------------------------
# Machine facts
# -------------------------------------------------------------------------------------------------


def machine_facts(binary: Path, work: Path) -> dict:
    cpuinfo = read_text("/proc/cpuinfo")

    def cpu(field: str) -> str:
        m = re.search(rf"^{field}\s*:\s*(.*)$", cpuinfo, re.M)
        return m.group(1).strip() if m else "?"

    flags = cpu("flags").split()
    meminfo = read_text("/proc/meminfo")
    m = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)
    df = subprocess.run(["df", "-hT", str(work)], capture_output=True, text=True).stdout.strip()
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    ver = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    cache = binary.parent / "CMakeCache.txt"
    build_type = compiler = "?"
    if cache.is_file():
        txt = read_text(str(cache))
        bt = re.search(r"^CMAKE_BUILD_TYPE:\w+=(.*)$", txt, re.M)
        cc = re.search(r"^CMAKE_CXX_COMPILER:\w+=(.*)$", txt, re.M)
        build_type = bt.group(1) if bt else "?"
        compiler = cc.group(1) if cc else "?"
    git_head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True).stdout
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": nproc,
        "cpu_model": cpu("model name"),
        "cpu_family_model": f"family {cpu('cpu family')} model {cpu('model')}",
        "avx512": "avx512f" in flags,
        "avx2": "avx2" in flags,
        "mem_total_bytes": int(m.group(1)) * 1024 if m else None,
        "kernel": platform.release(),
        "df": df,
        "loadavg_start": read_text("/proc/loadavg").split()[:3],
        "moeckpt": str(binary),
        "moeckpt_version": (ver.stdout or ver.stderr).strip(),
        "moeckpt_mtime": _dt.datetime.fromtimestamp(binary.stat().st_mtime).astimezone().isoformat(timespec="seconds"),
        "build_type": build_type,
        "compiler": compiler,
        "git_head": git_head,
        "git_modified_tracked_files": len([ln for ln in dirty.splitlines() if ln.strip()]),
    }


# -------------------------------------------------------------------------------------------------
# Measurements
# -------------------------------------------------------------------------------------------------


def synth(binary: Path, d: Path, experts: int, vocab: int, layers: int, commands: dict) -> float | None:
    cmd = [str(binary), "synth", str(d), "--preset", "full", "--layers", str(layers), "--experts",
           str(experts), "--vocab", str(vocab)]
    commands.setdefault("synth", []).append(sh(cmd))
    marker = d / ".e2e-synth-done"
    if marker.is_file() and marker.read_text().strip() == sh(cmd) and st_files(d):
        log(f"reusing {d}")
        return None
    rmtree(d)
    log(f"synthesizing {d} (E={experts}) ...")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    marker.write_text(sh(cmd) + "\n")
    log(f"synth E={experts}: {dt:.1f} s, {fmt_bytes(st_bytes(d))}")
    return dt


def floor_read(env: Env, files: list[Path]) -> float:
    env.before_timed()
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        subprocess.run(["cat", *map(str, files)], stdout=null, check=True)
    return time.perf_counter() - t0


def floor_write(env: Env, nbytes: int, floor_file: Path) -> float:
    floor_file.unlink(missing_ok=True)
    env.before_timed()
    t0 = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={floor_file}", "bs=64M", f"count={nbytes}",
                    "iflag=count_bytes", "conv=fsync"], check=True, stderr=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    if floor_file.stat().st_size != nbytes:
        raise SystemExit(f"dd wrote {floor_file.stat().st_size} bytes, expected {nbytes}")
    floor_file.unlink()
    return dt


def bench_experts(args, env: Env, binary: Path, experts: int, commands: dict) -> dict:
    base = args.work / f"e{experts}"
    hf = base / "hf"
    native = base / "native"
    back = base / "hf-back"
    ep = base / "native-ep0of8"
    floor_file = args.work / "floor.bin"
    base.mkdir(parents=True, exist_ok=True)
    r: dict = {"experts": experts, "synth_s": synth(binary, hf, experts, args.vocab, args.layers, commands)}
    r["in_bytes"] = st_bytes(hf)
    r["in_files"] = len(st_files(hf))

    c_from = [str(binary), "from-hf", str(hf), str(native), "--quiet"]
    c_to = [str(binary), "to-hf", str(native), str(back), "--quiet"]
    c_ep = [str(binary), "from-hf", str(hf), str(ep), "--ep-size", "8", "--ep-rank", "0", "--quiet"]
    for key, c in (("from_hf", c_from), ("to_hf", c_to), ("ep0of8", c_ep)):
        commands.setdefault(key, []).append("/usr/bin/time -v " + sh(c))

    runs = {k: [] for k in ("from_hf", "to_hf", "ep0of8", "from_hf_rss", "to_hf_rss", "ep0of8_rss",
                            "from_hf_cpu", "to_hf_cpu", "ep0of8_cpu",
                            "floor_from_read", "floor_from_write", "floor_to_read", "floor_to_write")}
    for i in range(args.repeat):
        log(f"E={experts} round {i + 1}/{args.repeat}: from-hf")
        rmtree(native)
        t, rss, cpu, _ = timed(env, c_from)
        runs["from_hf"].append(t)
        runs["from_hf_rss"].append(rss)
        runs["from_hf_cpu"].append(cpu)
        r["native_bytes"] = st_bytes(native)
        r["native_files"] = len(st_files(native))

        log(f"E={experts} round {i + 1}/{args.repeat}: to-hf")
        rmtree(back)
        t, rss, cpu, _ = timed(env, c_to)
        runs["to_hf"].append(t)
        runs["to_hf_rss"].append(rss)
        runs["to_hf_cpu"].append(cpu)
        r["hf_out_bytes"] = st_bytes(back)
        rmtree(back)

        log(f"E={experts} round {i + 1}/{args.repeat}: from-hf EP rank 0 of 8")
        rmtree(ep)
        t, rss, cpu, _ = timed(env, c_ep)
        runs["ep0of8"].append(t)
        runs["ep0of8_rss"].append(rss)
        runs["ep0of8_cpu"].append(cpu)
        r["ep_bytes"] = st_bytes(ep)
        rmtree(ep)

        log(f"E={experts} round {i + 1}/{args.repeat}: I/O floors")
        runs["floor_from_read"].append(floor_read(env, st_files(hf)))
        runs["floor_from_write"].append(floor_write(env, r["native_bytes"], floor_file))
        runs["floor_to_read"].append(floor_read(env, st_files(native)))
        runs["floor_to_write"].append(floor_write(env, r["hf_out_bytes"], floor_file))

    r["runs"] = runs
    med = {k: median([x for x in v if x is not None]) for k, v in runs.items()}
    r["median"] = med
    floor_from = median([a + b for a, b in zip(runs["floor_from_read"], runs["floor_from_write"])])
    floor_to = median([a + b for a, b in zip(runs["floor_to_read"], runs["floor_to_write"])])
    r["floor_from_hf_s"] = floor_from
    r["floor_to_hf_s"] = floor_to
    r["from_hf_floor_ratio"] = ratio(med["from_hf"], floor_from)
    r["to_hf_floor_ratio"] = ratio(med["to_hf"], floor_to)
    r["ep_ratio"] = ratio(med["ep0of8"], med["from_hf"])
    dd = "dd if=/dev/zero of={} bs=64M count={} iflag=count_bytes conv=fsync"
    commands.setdefault("floor", []).extend([
        f"# from-hf floor, {experts} experts: read the HF input, write native-sized",
        sh(["cat", *map(str, st_files(hf))]) + " > /dev/null",
        dd.format(floor_file, r["native_bytes"]),
        f"# to-hf floor, {experts} experts: read the native output, write HF-sized",
        sh(["cat", *map(str, st_files(native))]) + " > /dev/null",
        dd.format(floor_file, r["hf_out_bytes"]),
    ])
    if not args.keep_outputs:
        rmtree(native)
    return r


def bench_reference(args, env: Env, experts: int, r: dict, commands: dict) -> dict:
    hf = args.work / f"e{experts}" / "hf"
    py = args.oracle_python
    out: dict = {"experts": experts}
    if not py.exists():
        out["skipped"] = f"{py} not found (run tools/setup_oracle.sh)"
        return out
    # Automodel holds the whole FP8 input, the BF16 result and, per tensor, an F32 copy; grouping the experts
    # allocates the grouped tensor while the per-expert BF16 tensors are still alive.
    need = r["in_bytes"] + 2 * r["native_bytes"] + GIB
    avail = mem_available()
    out["estimated_need_bytes"] = need
    out["mem_available_bytes"] = avail
    if need > 0.9 * avail:
        out["skipped"] = (f"estimated peak {fmt_bytes(need)} > 90% of MemAvailable {fmt_bytes(avail)}")
        log(f"reference E={experts}: skipped: {out['skipped']}")
        return out
    script = args.work / "ref_from_hf.py"
    script.write_text(REFERENCE_SCRIPT)
    cmd = [str(py), str(script), str(hf), str(REPO)]
    commands.setdefault("reference", []).append("/usr/bin/time -v " + sh(cmd))
    runs: dict[str, list] = {"load_s": [], "convert_s": [], "total_s": [], "import_s": [], "wall_s": [],
                             "rss": []}
    for i in range(args.repeat):
        log(f"reference E={experts} round {i + 1}/{args.repeat} (Automodel from_hf) ...")
        wall, rss, _, stdout = timed(env, cmd)
        rec = json.loads(stdout.strip().splitlines()[-1])
        for k in ("load_s", "convert_s", "total_s", "import_s"):
            runs[k].append(rec[k])
        runs["wall_s"].append(wall)
        runs["rss"].append(rss)
        out["info"] = {k: rec[k] for k in ("tensors_in", "tensors_out", "bytes_out", "torch", "nemo_automodel",
                                           "safetensors", "torch_threads", "cpu_capability")}
        log(f"reference: load {rec['load_s']:.2f} s, convert {rec['convert_s']:.2f} s, rss {fmt_bytes(rss)}")
    out["runs"] = runs
    out["median"] = {k: median([x for x in v if x is not None]) for k, v in runs.items()}
    out["speedup"] = ratio(out["median"]["total_s"], r["median"]["from_hf"])
    out["mem_ratio"] = ratio(r["median"]["from_hf_rss"], out["median"]["rss"])
    return out


# -------------------------------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def verdicts(results: list[dict], refs: dict[int, dict]) -> list[tuple[str, str, str, str]]:
    by_e = {r["experts"]: r for r in results}
    big = max(by_e)
    small = min(by_e)
    rb = by_e[big]
    rows = []
    note = "" if big == 64 else f" (largest run: {big} experts)"
    x = rb["from_hf_floor_ratio"]
    rows.append((f"from-hf <= 1.3x I/O floor, 64 experts{note}", fmt_x(x), "<= 1.30x",
                 "measured (timing is reported, not asserted)"))
    x = rb["to_hf_floor_ratio"]
    rows.append((f"to-hf <= 1.5x I/O floor, {big} experts", fmt_x(x), "<= 1.50x",
                 "measured (timing is reported, not asserted)"))
    x = rb["ep_ratio"]
    rows.append((f"EP rank 0 of 8 <= 0.3x full from-hf, {big} experts", fmt_x(x), "<= 0.30x",
                 "measured (timing is reported, not asserted)"))
    peak = max(v for r in results for v in (r["median"]["from_hf_rss"], r["median"]["to_hf_rss"])
               if v is not None)
    rows.append(("peak RSS from outside (wait4 via /usr/bin/time) <= 256 MiB, largest from-hf / to-hf",
                 fmt_bytes(peak), "<= 256 MiB", verdict(peak <= TARGETS["rss_bytes"])))
    for cmd in ("from_hf", "to_hf"):
        if big != small:
            g = ratio(by_e[big]["median"][f"{cmd}_rss"], by_e[small]["median"][f"{cmd}_rss"])
            ok = None if g is None else g <= TARGETS["rss_growth"]
        else:
            g, ok = None, None
        rows.append((f"{cmd.replace('_', '-')} peak RSS {big}/{small} experts <= 1.10", fmt_x(g, 3), "<= 1.10x",
                     verdict(ok)))
    ref = refs.get(big, {})
    if "median" in ref:
        rows.append((f"speedup vs Automodel (load + from_hf), {big} experts", fmt_x(ref["speedup"], 1),
                     ">= 10x", "measured (timing is reported, not asserted)"))
        rows.append((f"peak RSS moeckpt / Automodel, {big} experts", fmt_x(ref["mem_ratio"], 3), "<= 0.10x",
                     verdict(ref["mem_ratio"] <= TARGETS["mem_ratio"])))
    else:
        why = ref.get("skipped", "not run")
        rows.append((f"speedup vs Automodel, {big} experts", f"skipped: {why}", ">= 10x", "n/a"))
        rows.append((f"peak RSS moeckpt / Automodel, {big} experts", "skipped", "<= 0.10x", "n/a"))
    return rows


def gbps(nbytes: int, s: float | None) -> str:
    return "—" if not s else f"{nbytes / s / 1e9:.2f} GB/s"


def render(args, facts: dict, env: Env, results: list[dict], refs: dict[int, dict], commands: dict,
           elapsed: float) -> str:
    L: list[str] = []
    L.append("# moeckpt end-to-end benchmark")
    L.append("")
    L.append(f"Generated by `python3 bench/e2e.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}` on "
             f"{facts['date']}, {elapsed / 60:.1f} min. Every time is the median of {args.repeat} run(s), wall "
             "clock around the child process; peak RSS from `/usr/bin/time -v`.")
    L.append("")
    L.append("## Machine")
    L.append("")
    L.append(f"- CPU: {facts['cpu_model']} ({facts['cpu_family_model']}), `nproc` = {facts['nproc']}, "
             f"AVX2 {'yes' if facts['avx2'] else 'no'}, AVX-512 {'yes' if facts['avx512'] else 'no'}")
    L.append(f"- RAM: {fmt_bytes(facts['mem_total_bytes'])}; kernel {facts['kernel']}; load average at start "
             f"{' '.join(facts['loadavg_start'])}, at end {' '.join(facts.get('loadavg_end', []))}")
    L.append(f"- moeckpt: `{facts['moeckpt']}` ({facts['moeckpt_version']}), CMAKE_BUILD_TYPE="
             f"{facts['build_type']}, {facts['compiler']}, built {facts['moeckpt_mtime']}; at run time git HEAD "
             f"{facts['git_head']} with {facts['git_modified_tracked_files']} modified tracked file(s) in the "
             "working tree")
    L.append(f"- Page cache: {env.drop_note}")
    L.append("- Disk (`df -hT` of the work dir):")
    L.append("")
    L.append("```")
    L.append(facts["df"])
    L.append("```")
    L.append("")
    L.append("## I/O floor")
    L.append("")
    L.append("from-hf floor = `cat` of every input `.safetensors` to /dev/null + `dd` writing the native output's "
             "total `.safetensors` byte count (one file, 64 MiB blocks, `conv=fsync`, exact byte count via "
             "`iflag=count_bytes`). to-hf floor = `cat` of the native `.safetensors` + `dd` of the HF output's "
             "byte count. Floor = median over rounds of (read + write) of the same round. moeckpt fsyncs every "
             "output shard, so both sides pay for durable writes. "
             + ("Caches were dropped before every timed step, so reads come from disk."
                if env.drop_caches else
                "The page cache is warm: inputs were just synthesized or read and fit in RAM, so the read "
                "part measures memory copies, not the disk; the write part includes the fsync to disk."))
    L.append("")
    L.append("## moeckpt")
    L.append("")
    L.append("| experts | input (HF, FP8) | native out | HF out | from-hf | floor | ratio | to-hf | floor | ratio "
             "| EP 0/8 | EP/full | RSS from-hf | RSS to-hf | RSS EP 0/8 |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m = r["median"]
        L.append(f"| {r['experts']} | {fmt_bytes(r['in_bytes'])} | {fmt_bytes(r['native_bytes'])} | "
                 f"{fmt_bytes(r['hf_out_bytes'])} | {fmt_s(m['from_hf'])} | {fmt_s(r['floor_from_hf_s'])} | "
                 f"{fmt_x(r['from_hf_floor_ratio'])} | {fmt_s(m['to_hf'])} | {fmt_s(r['floor_to_hf_s'])} | "
                 f"{fmt_x(r['to_hf_floor_ratio'])} | {fmt_s(m['ep0of8'])} | {fmt_x(r['ep_ratio'])} | "
                 f"{fmt_bytes(m['from_hf_rss'])} | {fmt_bytes(m['to_hf_rss'])} | {fmt_bytes(m['ep0of8_rss'])} |")
    L.append("")
    L.append("Floor parts and CPU time (medians):")
    L.append("")
    L.append("| experts | read HF input | write native-sized | read native | write HF-sized | from-hf throughput "
             "(input + output bytes / s) | to-hf throughput | CPU user+sys from-hf / to-hf / EP 0/8 |")
    L.append("|---|---|---|---|---|---|---|---|")
    for r in results:
        m = r["median"]
        L.append(f"| {r['experts']} | {fmt_s(m['floor_from_read'])} | {fmt_s(m['floor_from_write'])} | "
                 f"{fmt_s(m['floor_to_read'])} | {fmt_s(m['floor_to_write'])} | "
                 f"{gbps(r['in_bytes'] + r['native_bytes'], m['from_hf'])} | "
                 f"{gbps(r['native_bytes'] + r['hf_out_bytes'], m['to_hf'])} | "
                 f"{fmt_s(m['from_hf_cpu'])} / {fmt_s(m['to_hf_cpu'])} / {fmt_s(m['ep0of8_cpu'])} |")
    L.append("")
    L.append("## Reference: NeMo Automodel `MiMoV2FlashStateDictAdapter.from_hf`")
    L.append("")
    L.append("`safetensors.torch.load_file` of every shard into one dict, then `from_hf(sd, device_mesh=None)` "
             "(EP 1, dtype bf16, adapter built as in tools/make_goldens.py), timed inside the subprocess "
             "(Python/torch import time excluded from total, shown separately); peak RSS of the whole "
             "subprocess. Speedup = reference total / moeckpt from-hf; memory = moeckpt from-hf peak RSS / "
             "reference peak RSS.")
    L.append("")
    L.append("| experts | load | from_hf | total | (import) | peak RSS | moeckpt from-hf | speedup | memory ratio |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    by_e = {r["experts"]: r for r in results}
    if not refs:
        L.append("| not run (`--no-reference`) | | | | | | | | |")
    for e, ref in refs.items():
        if "median" not in ref:
            L.append(f"| {e} | skipped: {ref.get('skipped', '?')} | | | | | | | |")
            continue
        m = ref["median"]
        L.append(f"| {e} | {fmt_s(m['load_s'])} | {fmt_s(m['convert_s'])} | {fmt_s(m['total_s'])} | "
                 f"{fmt_s(m['import_s'])} | {fmt_bytes(m['rss'])} | {fmt_s(by_e[e]['median']['from_hf'])}, "
                 f"{fmt_bytes(by_e[e]['median']['from_hf_rss'])} | {fmt_x(ref['speedup'], 1)} | "
                 f"{fmt_x(ref['mem_ratio'], 3)} |")
    info = next((ref["info"] for ref in refs.values() if "info" in ref), None)
    if info:
        L.append("")
        L.append("`load_file` in safetensors >= 0.8 defaults to `backend=\"mmap\"`: the tensors are views of the "
                 "mapped files, so `load` is nearly free and the file reads (page faults) happen inside `from_hf`; "
                 "the RSS counts the mapped pages it touched.")
        L.append("")
        L.append(f"torch {info['torch']} ({info['torch_threads']} threads, CPU capability {info['cpu_capability']}), "
                 f"nemo_automodel {info['nemo_automodel']}, safetensors {info['safetensors']}.")
    L.append("")
    L.append("## Verdicts")
    L.append("")
    L.append("| target | measured | threshold | verdict |")
    L.append("|---|---|---|---|")
    for row in verdicts(results, refs):
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("## Commands")
    L.append("")
    L.append("```")
    for key in ("synth", "from_hf", "to_hf", "ep0of8", "floor", "reference"):
        for c in commands.get(key, []):
            L.append(c)
    L.append("```")
    L.append("")
    L.append(f"Outputs are removed (untimed) before each run; `sync` runs (untimed) before every timed step. "
             f"Work dir: `{args.work}`.")
    L.append("")
    return "\n".join(L)


# -------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moeckpt", type=Path, default=REPO / "build-bench" / "moeckpt", help="moeckpt binary")
    ap.add_argument("--work", type=Path, default=Path("/tmp/moeckpt-e2e"), help="work dir (inputs reused)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    ap.add_argument("--experts", type=int, nargs="+", default=[64, 32],
                    help="expert counts to synthesize and measure (default 64 32)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--drop-caches", action="store_true",
                    help="sync; echo 3 > /proc/sys/vm/drop_caches before every timed step (root)")
    ap.add_argument("--no-reference", action="store_true", help="skip the Automodel reference")
    ap.add_argument("--reference-experts", type=int, nargs="*", default=None,
                    help="expert counts to run the reference on (default: all of --experts)")
    ap.add_argument("--oracle-python", type=Path, default=REPO / ".venv-oracle" / "bin" / "python")
    ap.add_argument("--keep-outputs", action="store_true", help="keep the last native output under --work")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "e2e-latest.md")
    ap.add_argument("--json", type=Path, default=REPO / "docs" / "bench" / "e2e-latest.json",
                    help="raw numbers as JSON")
    args = ap.parse_args()

    binary = args.moeckpt.resolve()
    if not binary.is_file():
        ap.error(f"{binary} not found: cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release && "
                 "cmake --build build-bench --target moeckpt")
    if not Path("/usr/bin/time").is_file():
        ap.error("/usr/bin/time not found (apt-get install time)")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    env = Env(args.drop_caches)
    facts = machine_facts(binary, args.work)
    env.probe_drop()
    commands: dict = {}
    experts = sorted(set(args.experts), reverse=True)
    for e in experts:  # synthesize everything first, so the timed runs do not interleave with synth
        synth(binary, args.work / f"e{e}" / "hf", e, args.vocab, args.layers, {})
    results = [bench_experts(args, env, binary, e, commands) for e in experts]
    refs: dict[int, dict] = {}
    if not args.no_reference:
        ref_es = experts if args.reference_experts is None else sorted(set(args.reference_experts), reverse=True)
        for e in ref_es:
            r = next((x for x in results if x["experts"] == e), None)
            if r is None:
                continue
            refs[e] = bench_reference(args, env, e, r, commands)
    facts["loadavg_end"] = read_text("/proc/loadavg").split()[:3]
    elapsed = time.perf_counter() - t_start

    md = render(args, facts, env, results, refs, commands, elapsed)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md, encoding="utf-8")
    raw = {
        "argv": sys.argv,
        "repeat": args.repeat,
        "machine": facts,
        "drop_caches": {"requested": args.drop_caches, "worked": env.drop_ok, "note": env.drop_note},
        "targets": TARGETS,
        "results": results,
        "reference": {str(k): v for k, v in refs.items()},
        "verdicts": [dict(zip(("target", "measured", "threshold", "verdict"), row)) for row in verdicts(results, refs)],
        "commands": commands,
        "elapsed_s": elapsed,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {args.out} and {args.json} ({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
