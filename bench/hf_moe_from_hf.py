#!/usr/bin/env python3
"""from-hf of a plain Hugging Face MoE family (Qwen3-MoE, GLM-4.5, MiniMax-M2, gpt-oss) at one real MoE layer: moeckpt against NeMo
Automodel 0.7.0's path and the disk's floor, measured in the same run.

    .venv-py/bin/python bench/hf_moe_from_hf.py [--preset qwen3-235b-a22b-fp8] [--bf16] [--layers N]
        [--experts N] [--vocab 4096] [--mtp 0] [--work /work/bench-hf-moe] [--repeat 3] [--ep-size 8]
        [--automodel auto|yes|no] [--floor both|buffered|direct|none] [--out docs/bench/hf-moe-PRESET-latest.md]
        [--plan-only] [--force]

Input: `moeckpt synth DIR --preset PRESET --layers L --experts E --vocab V --mtp 0`, made once under --work and
reused. The default is Qwen3-235B-A22B's FP8 release (`qwen3-235b-a22b-fp8`: hidden 4096, 64 query / 4 KV heads of
128, 128 experts 1536 wide, every attention and expert projection in 128x128 block FP8 with weight_scale_inv),
with the vocabulary trimmed to 4096 as bench/deepseek_from_hf.py trims DeepSeek-V3's; `--bf16` takes the preset's
BF16 release instead (`qwen3-235b-a22b`). L defaults to the first MoE layer + 1, read from the preset's config
(Qwen3: mlp_only_layers / decoder_sparse_step, so 1; GLM-4.5: first_k_dense_replace 3, so 4 with layers 0-2 dense).
E defaults to the preset's routed expert count (all 128 for Qwen3-235B-A22B).
gpt-oss (`--preset gpt-oss-120b`: hidden 2880, 128 experts 2880 wide in MXFP4, stacked per layer with their biases):
Automodel's adapter decodes MXFP4 itself, so its output is checked byte for byte against moeckpt's as on BF16 input.

Rows, each a fresh child measured from outside (wall time around the child, peak RSS and CPU from
`/usr/bin/time -f "%M %U %S"`, i.e. GNU time's wait4 on it), alternating within every round, medians over --repeat
rounds:
  moeckpt         `moeckpt from-hf DIR OUT --quiet` (its shards are fsynced before it exits)
  moeckpt EP 0/W  `moeckpt from-hf DIR OUT --ep-size W --ep-rank 0 --quiet`
  automodel       load_file of every shard + the family's Automodel StateDictAdapter.from_hf (built as its model
                  class builds it, tools/make_hf_moe_goldens.make_adapter) + save_file of the result, as
                  bench/deepseek_from_hf.py runs DeepSeekV3StateDictAdapter. Its save is not fsynced; the `sync`
                  after every run is timed and reported as "flush" so that what it left dirty is visible.
                  Automodel's Qwen3-MoE / GLM-4.5 adapters have no FP8 path: on an FP8 input they drop every
                  weight_scale_inv and keep the raw FP8 codes (the experts cast to BF16 unscaled, the attention
                  projections left F8_E4M3), so their output is wrong; the row is timed all the same and marked.
  floor           `cat` of the input shards to /dev/null + `dd if=/dev/zero bs=64M count=OUT_BYTES iflag=count_bytes
                  conv=fsync` (buffered writes, then fsync), OUT_BYTES = the size of moeckpt's output (its first run)
  floor direct    the same cat + `dd bs=1M oflag=direct conv=fsync` of OUT_BYTES rounded up to MiB (large O_DIRECT
                  writes, as moeckpt writes its large pieces); "vs floor" uses the faster floor.
The output folder is removed (untimed) and `sync` run (untimed) before each run; the input is read once before
the rounds (page cache warm where it fits).

Checks, on the first round's outputs (a SHA-256 per tensor, read from the safetensors headers and data):
  - EP rank 0 of W: every tensor equals the full output's, the grouped expert tensors equal their first E/W experts.
  - automodel: per tensor name, dtype, shape and digest against moeckpt's. On a BF16 input every tensor must be
    equal byte for byte (the script exits 1 otherwise); on an FP8 input the differing tensors are counted by dtype.

Before synthesizing, the input is planned with `synth --sparse` (the same options, no data written) to get the exact
input and output sizes; the run refuses when --work's file system lacks the input (if not yet there) + the largest
output + 1 GiB, and the automodel row is skipped (--automodel auto) when its estimated peak (input + 2 x output +
1 GiB, as bench/e2e.py estimates it) exceeds 90% of MemAvailable. `--plan-only` stops after printing them.

At the defaults (from --plan-only): 2.38 GiB of FP8 in, 4.70 GiB of BF16 out (EP 0/8: 0.76 GiB); 8.1 GiB free needed
under --work; Automodel's peak about 6.3 GiB (extrapolated from runs at 8 and 16 experts: 1.19 and 1.53 GiB).
--bf16: 4.70 GiB in and out, 10.4 GiB free needed, Automodel about 8.1 GiB (1.35 and 1.80 GiB at 8 and 16).
GLM-4.5 (`--preset glm-4.5`, 4 layers, 160 experts): 9.23 GiB in and out, 19.5 GiB free needed, and the automodel
row is skipped on a 24 GiB machine (estimate 28.7 GiB); `--experts 64` makes it 5.0 GiB in and out.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30
CHUNK = 8 << 20  # reads of this process stay small: its RSS is no part of any figure
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}

CHILD = r'''
import json, os, sys, time
t_start = time.perf_counter()
hf_dir, out_dir, repo = sys.argv[1], sys.argv[2], sys.argv[3]
import torch
import safetensors.torch
sys.path.insert(0, os.path.join(repo, "tools"))
sys.path.insert(0, os.path.join(repo, "bench"))
from make_hf_moe_goldens import make_adapter
from bench_support import load_hf_tensors
with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
    cfg = json.load(f)
adapter = make_adapter(cfg)
t0 = time.perf_counter()
sd = load_hf_tensors(hf_dir)
t1 = time.perf_counter()
native = adapter.from_hf(sd)
t2 = time.perf_counter()
os.makedirs(out_dir, exist_ok=True)
safetensors.torch.save_file({k: v.contiguous() for k, v in native.items()}, os.path.join(out_dir, "model.safetensors"))
t3 = time.perf_counter()
print(json.dumps({"seconds": t3 - t0, "setup": t0 - t_start, "load": t1 - t0, "from_hf": t2 - t1, "save": t3 - t2,
                  "tensors": len(native)}))
'''


# ---------------------------------------------------------------- safetensors folders


def st_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.safetensors"))


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in st_files(d))


def read_header(path: Path) -> tuple[dict, int]:
    """The safetensors header of `path` (without __metadata__) and the offset its data starts at."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def folder_tensors(d: Path) -> dict:
    """name -> (file, dtype, shape, absolute begin, absolute end) of every tensor of a safetensors folder."""
    out = {}
    for f in st_files(d):
        header, base = read_header(f)
        for name, t in header.items():
            b, e = t["data_offsets"]
            out[name] = (f, t["dtype"], tuple(t["shape"]), base + b, base + e)
    return out


def digests(d: Path, prefix_fraction: dict | None = None) -> dict:
    """name -> (dtype, shape, sha256 of its bytes[, sha256 of its first bytes]) for every tensor of folder d.
    prefix_fraction maps a tensor name to (num, den): the digest of its first num/den of bytes is added too."""
    res = {}
    for name, (f, dtype, shape, b, e) in folder_tensors(d).items():
        h = hashlib.sha256()
        cut = None
        if prefix_fraction and name in prefix_fraction:
            num, den = prefix_fraction[name]
            cut = (e - b) * num // den
        prefix = None
        with open(f, "rb") as fh:
            fh.seek(b)
            left, done = e - b, 0
            while left:
                step = min(left, CHUNK)
                if cut is not None and done < cut < done + step:
                    step = cut - done
                chunk = fh.read(step)
                if len(chunk) != step:
                    raise SystemExit(f"{f}: short read of {name}")
                h.update(chunk)
                done += step
                left -= step
                if cut is not None and done == cut:
                    prefix = h.copy().hexdigest()
        if cut == 0:
            prefix = hashlib.sha256().hexdigest()
        res[name] = (dtype, shape, h.hexdigest(), prefix)
    return res


def expected_output_bytes(hf: Path, ep_num: int = 1, ep_den: int = 1, n_experts: int = 0) -> int:
    """Bytes of moeckpt from-hf's BF16 output planned from the input headers: FP8 weights become BF16, scales go,
    every other tensor keeps its size; per-expert weights (`.experts.N.`) count ep_num/ep_den of them."""
    total = 0
    for name, (_f, dtype, shape, b, e) in folder_tensors(hf).items():
        if (name.endswith("_scale_inv") or name.endswith(".weight_scale") or name.endswith(".input_scale")
                or name.endswith("_scales")):
            continue
        n = e - b
        if dtype.startswith("F8"):
            n = n // DTYPE_BYTES[dtype] * 2
        if dtype == "U8" and name.endswith("_blocks"):  # MXFP4: two values a byte, BF16 out
            n *= 4
        if ".experts." in name and n_experts and ep_den > 1:
            parts = name.split(".experts.", 1)[1].split(".", 1)
            if parts[0].isdigit() and int(parts[0]) >= n_experts * ep_num // ep_den:
                continue
            if not parts[0].isdigit():  # stacked over the experts (gpt-oss): the rank's rows
                n = n * ep_num // ep_den
        total += n
    return total


# ---------------------------------------------------------------- config


def routed_experts(cfg: dict) -> int:
    for k in ("num_experts", "n_routed_experts", "num_local_experts"):
        if cfg.get(k):
            return int(cfg[k])
    raise SystemExit(f"config.json names no routed expert count (model_type {cfg.get('model_type')!r})")


def is_moe_layer(cfg: dict, i: int) -> bool:
    """Whether decoder layer i is MoE, with transformers' rules for the family."""
    if "first_k_dense_replace" in cfg and cfg.get("first_k_dense_replace") is not None:  # GLM-4.5, DeepSeek-V3
        freq = int(cfg.get("moe_layer_freq") or 1)
        return i >= int(cfg["first_k_dense_replace"]) and i % freq == 0
    if "decoder_sparse_step" in cfg or "mlp_only_layers" in cfg:  # Qwen3-MoE
        step = int(cfg.get("decoder_sparse_step") or 1)
        return i not in (cfg.get("mlp_only_layers") or []) and (i + 1) % step == 0
    return True


def first_moe_layer(cfg: dict) -> int:
    for i in range(int(cfg["num_hidden_layers"])):
        if is_moe_layer(cfg, i):
            return i
    raise SystemExit("the preset's config has no MoE layer")


def bf16_sibling(preset: str) -> str:
    return preset[:-4] if preset.endswith("-fp8") else preset


# ---------------------------------------------------------------- measuring


def sh_sync() -> float:
    t0 = time.perf_counter()
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - t0


def run_timed_child(cmd: list, what: str) -> dict:
    """Runs cmd under `/usr/bin/time -f "%M %U %S"`: wall time around it, its peak RSS and CPU from GNU time's
    wait4 on it, the JSON lines it printed. (os.wait4 on a child of this process would not do for the peak: a
    vfork+exec child inherits this process's own high-water RSS as its ru_maxrss floor.)"""
    with tempfile.TemporaryDirectory() as tmp:
        stat, out, err = Path(tmp) / "time", Path(tmp) / "out", Path(tmp) / "err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            t0 = time.perf_counter()
            code = subprocess.run(["/usr/bin/time", "-o", str(stat), "-f", "%M %U %S", *cmd], stdout=fo,
                                  stderr=fe).returncode
            wall = time.perf_counter() - t0
        if code != 0:
            sys.stderr.write(err.read_text(errors="replace")[-4000:])
            raise SystemExit(f"{what}: child failed with exit code {code}")
        rss_kb, user, system = stat.read_text().split()[-3:]
        lines = [json.loads(x) for x in out.read_text().splitlines() if x.startswith("{")]
    return {"wall": wall, "rss": int(rss_kb) * 1024, "cpu": float(user) + float(system),
            "child": lines[-1] if lines else None}


def timed(cmd: list, what: str) -> dict:
    """One measured run: `sync` (untimed), the child, then a timed `sync` (what the child left dirty in the page
    cache, as 'flush')."""
    sh_sync()
    m = run_timed_child(cmd, what)
    m["flush"] = sh_sync()
    return m


def mem_available() -> int:
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moeckpt", type=Path, default=REPO / "build" / "moeckpt")
    ap.add_argument("--preset", default="qwen3-235b-a22b-fp8", help="moeckpt synth preset (default %(default)s)")
    ap.add_argument("--bf16", action="store_true",
                    help="the preset's BF16 release (the preset without -fp8), where Automodel's output is correct "
                         "and is checked byte for byte against moeckpt's")
    ap.add_argument("--layers", type=int, help="decoder layers (default: the first MoE layer + 1)")
    ap.add_argument("--experts", type=int, help="routed experts (default: the preset's)")
    ap.add_argument("--vocab", type=int, default=4096, help="vocabulary (default %(default)s, as the DeepSeek bench)")
    ap.add_argument("--mtp", type=int, default=0, help="MTP layers for presets that have them (default 0)")
    ap.add_argument("--work", type=Path, default=Path("/work/bench-hf-moe"),
                    help="inputs (kept, reused) and the output folder (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ep-size", type=int, default=8)
    ap.add_argument("--automodel", choices=("auto", "yes", "no"), default="auto",
                    help="run Automodel's path: auto = when its estimated peak fits 90%% of MemAvailable")
    ap.add_argument("--floor", choices=("both", "buffered", "direct", "none"), default="both")
    ap.add_argument("--force", action="store_true", help="run even when the disk check fails")
    ap.add_argument("--plan-only", action="store_true",
                    help="print the planned sizes, disk and memory checks (sparse synth only) and stop")
    ap.add_argument("--out", type=Path, help="Markdown report (default docs/bench/hf-moe-PRESET-latest.md)")
    args = ap.parse_args()

    cli = str(args.moeckpt.resolve())
    preset = bf16_sibling(args.preset) if args.bf16 else args.preset
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    out_md = args.out or REPO / "docs" / "bench" / f"hf-moe-{preset}-latest.md"

    # The preset's own config (its layer types), from a sparse synth of its first 16 layers (16 untrimmed, so
    # that first_k_dense_replace is not clamped): nothing but headers, scales and small tensors is written.
    layers = args.layers
    if layers is None:
        probe = work / "probe"
        shutil.rmtree(probe, ignore_errors=True)
        probe_cmd = [cli, "synth", str(probe), "--preset", preset, "--experts", "1", "--vocab", "16", "--mtp", "0",
                     "--sparse"]
        if subprocess.run(probe_cmd + ["--layers", "16"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode != 0:  # a preset of fewer layers: all of them
            shutil.rmtree(probe, ignore_errors=True)
            if subprocess.run(probe_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
                # A layout synthesized by export has no sparse files (gpt-oss): one real layer of one expert.
                shutil.rmtree(probe, ignore_errors=True)
                subprocess.run(probe_cmd[:-1] + ["--layers", "1"], check=True, stdout=subprocess.DEVNULL)
        pcfg = json.loads((probe / "config.json").read_text(encoding="utf-8"))
        shutil.rmtree(probe)
        layers = first_moe_layer(pcfg) + 1
        log(f"{preset}: first MoE layer {layers - 1}, so --layers {layers}")
    synth_opts = ["--preset", preset, "--layers", str(layers), "--vocab", str(args.vocab), "--mtp", str(args.mtp)]
    if args.experts:
        synth_opts += ["--experts", str(args.experts)]

    # Plan: the same checkpoint as sparse files, for its exact sizes before any data is written. A layout synthesized
    # by export has no sparse files: two real ones of 1 and 2 experts instead, every size being linear in the experts.
    plan = work / "plan"
    shutil.rmtree(plan, ignore_errors=True)
    linear = None
    if subprocess.run([cli, "synth", str(plan), *synth_opts, "--sparse"], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL).returncode != 0:
        base = [o for i, o in enumerate(synth_opts) if o != "--experts" and synth_opts[i - 1] != "--experts"]
        sizes = []
        for e in (1, 2):
            shutil.rmtree(plan, ignore_errors=True)
            subprocess.run([cli, "synth", str(plan), *base, "--experts", str(e)], check=True, stdout=subprocess.DEVNULL)
            sizes.append((dir_bytes(plan), expected_output_bytes(plan)))
        if not args.experts:
            raise SystemExit(f"{preset} is synthesized by export, without sparse files: give --experts (its routed "
                             f"expert count, e.g. 128 for gpt-oss-120b)")
        shutil.rmtree(plan)
        subprocess.run([cli, "synth", str(plan), *base, "--experts", "1"], check=True, stdout=subprocess.DEVNULL)
        cfg = json.loads((plan / "config.json").read_text(encoding="utf-8"))
        cfg["num_local_experts"] = args.experts
        linear = sizes
    else:
        cfg = json.loads((plan / "config.json").read_text(encoding="utf-8"))
    n_exp = routed_experts(cfg)
    moe_layers = [i for i in range(int(cfg["num_hidden_layers"])) if is_moe_layer(cfg, i)]
    quant = (cfg.get("quantization_config") or {}).get("quant_method")
    mxfp4 = quant == "mxfp4"
    # Automodel's Qwen3-MoE / GLM-4.5 adapters have no FP8 path (wrong output); its gpt-oss one decodes MXFP4.
    fp8 = quant is not None and not mxfp4
    ep_ok = args.ep_size > 1 and n_exp % args.ep_size == 0
    if linear is None:
        in_bytes = dir_bytes(plan)
        out_bytes = expected_output_bytes(plan)
        ep_bytes = expected_output_bytes(plan, 1, args.ep_size, n_exp) if ep_ok else 0
    else:  # size(E) = size(1) + (E - 1) x (size(2) - size(1))
        (in1, out1), (in2, out2) = linear
        in_bytes = in1 + (n_exp - 1) * (in2 - in1)
        out_bytes = out1 + (n_exp - 1) * (out2 - out1)
        ep_bytes = out1 + (n_exp // args.ep_size - 1) * (out2 - out1) if ep_ok else 0
    shutil.rmtree(plan)
    if args.ep_size > 1 and not ep_ok:
        log(f"{n_exp} experts do not split evenly over {args.ep_size} ranks: no EP row")

    tag = f"{preset}-L{layers}-E{n_exp}-V{args.vocab}-M{args.mtp}"
    hf = work / f"hf-{tag}"
    marker = hf / ".synth-done"
    have_input = marker.exists() and marker.read_text(encoding="utf-8").strip() == " ".join(synth_opts)
    free = shutil.disk_usage(work).free
    need = (0 if have_input else in_bytes) + out_bytes + GIB
    est_am = in_bytes + 2 * out_bytes + GIB
    avail = mem_available()
    log(f"input {in_bytes / GIB:.2f} GiB ({'present' if have_input else 'to synthesize'}), moeckpt output "
        f"{out_bytes / GIB:.2f} GiB, EP 0/{args.ep_size} output {ep_bytes / GIB:.2f} GiB; disk needed "
        f"{need / GIB:.2f} GiB, free {free / GIB:.2f} GiB under {work}; Automodel's estimated peak "
        f"{est_am / GIB:.2f} GiB, MemAvailable {avail / GIB:.2f} GiB")
    if args.plan_only:
        return 0
    if need > free and not args.force:
        raise SystemExit(f"not enough disk under {work}: {need / GIB:.2f} GiB needed, {free / GIB:.2f} GiB free "
                         f"(remove other hf-* inputs there, or --force)")
    run_am = args.automodel == "yes" or (args.automodel == "auto" and est_am <= 0.9 * avail)
    if not run_am:
        log(f"automodel row skipped (--automodel {args.automodel}; estimated peak {est_am / GIB:.2f} GiB)")

    if not have_input:
        shutil.rmtree(hf, ignore_errors=True)
        log(f"synthesizing {hf} ...")
        t0 = time.perf_counter()
        subprocess.run([cli, "synth", str(hf), *synth_opts], check=True, stdout=subprocess.DEVNULL)
        marker.write_text(" ".join(synth_opts) + "\n", encoding="utf-8")
        log(f"synth: {time.perf_counter() - t0:.1f} s, {dir_bytes(hf) / GIB:.2f} GiB")
    in_bytes = dir_bytes(hf)
    inputs = st_files(hf)
    # Warm the page cache (untimed) so that no path pays for the first read from disk.
    for f in inputs:
        with open(f, "rb") as fh:
            while fh.read(CHUNK):
                pass

    out = work / "out"
    floor_file = out / "floor.bin"
    cat = "cat " + " ".join(f"'{f}'" for f in inputs) + " > /dev/null"
    ep_name = f"moeckpt EP 0/{args.ep_size}"
    paths = [("moeckpt", [cli, "from-hf", str(hf), str(out), "--quiet"])]
    if ep_ok:
        paths.append((ep_name, [cli, "from-hf", str(hf), str(out), "--ep-size", str(args.ep_size), "--ep-rank", "0",
                                "--quiet"]))
    if run_am:
        script = work / "automodel_child.py"
        script.write_text(CHILD, encoding="utf-8")
        paths.append(("automodel", [sys.executable, str(script), str(hf), str(out), str(REPO)]))
    # The floors write OUT_BYTES = what moeckpt's first run wrote (known by the time they run).
    floor_bytes = [out_bytes]
    if args.floor in ("both", "buffered"):
        paths.append(("floor", lambda: ["bash", "-c", f"{cat} && dd if=/dev/zero of='{floor_file}' bs=64M "
                                                      f"count={floor_bytes[0]} iflag=count_bytes conv=fsync status=none"]))
    if args.floor in ("both", "direct"):
        paths.append(("floor direct", lambda: ["bash", "-c", f"{cat} && dd if=/dev/zero of='{floor_file}' bs=1M "
                                                             f"count={-(-floor_bytes[0] // (1 << 20))} oflag=direct "
                                                             f"conv=fsync status=none"]))

    runs: dict = {name: [] for name, _ in paths}
    written: dict = {}
    checks: list[str] = []
    failed = False
    ref_dig = None
    grouped = {}
    for r in range(args.repeat):
        for name, cmd in paths:
            shutil.rmtree(out, ignore_errors=True)
            if name.startswith("floor"):
                out.mkdir(parents=True)
            m = timed(cmd() if callable(cmd) else cmd, name)
            w = dir_bytes(out) if not name.startswith("floor") else floor_file.stat().st_size
            runs[name].append(m)
            written.setdefault(name, w)
            extra = ""
            if m["child"]:
                c = m["child"]
                extra = (f" (inside: setup {c['setup']:.1f} s, load {c['load']:.1f} s, from_hf {c['from_hf']:.1f} s, "
                         f"save {c['save']:.1f} s)")
            log(f"round {r + 1}/{args.repeat} {name}: {m['wall']:.2f} s + flush {m['flush']:.2f} s, peak RSS "
                f"{m['rss'] / GIB:.2f} GiB, CPU {m['cpu']:.1f} s, wrote {w / GIB:.2f} GiB{extra}")
            if r:
                continue
            # Checks on the first round's outputs (untimed).
            if name == "moeckpt":
                floor_bytes[0] = w
                if abs(w - out_bytes) > (1 << 20):
                    log(f"note: moeckpt wrote {w} bytes, {out_bytes} planned")
                tensors = folder_tensors(out)
                grouped = {k: (1, args.ep_size) for k, (_f, _d, shape, _b, _e) in tensors.items()
                           if ".experts." in k and shape and shape[0] == n_exp}
                ref_dig = digests(out, grouped if ep_ok else None)
            elif name == ep_name:
                ep_dig = digests(out)
                bad = []
                for k, (dtype, shape, dig, _p) in ep_dig.items():
                    full = ref_dig.get(k)
                    want = full and (full[3] if k in grouped else full[2])
                    if not full or dtype != full[0] or dig != want:
                        bad.append(k)
                if bad or set(ep_dig) != set(ref_dig):
                    failed = True
                    checks.append(f"**{ep_name} differs from the full output** in {len(bad)} tensors, e.g. {bad[:3]}; "
                                  f"names missing: {sorted(set(ref_dig) - set(ep_dig))[:3]}")
                else:
                    checks.append(f"{ep_name}: all {len(ep_dig)} tensors equal the full output's (the {len(grouped)} "
                                  f"grouped expert tensors: its first {n_exp // args.ep_size} experts), byte for byte")
            elif name == "automodel":
                am_dig = digests(out)
                same = [k for k in am_dig if k in ref_dig and am_dig[k][:3] == ref_dig[k][:3]]
                diff = {}
                for k in am_dig:
                    if k in ref_dig and k not in same:
                        key = (am_dig[k][0], ref_dig[k][0])
                        diff.setdefault(key, []).append(k)
                only_am, only_mo = sorted(set(am_dig) - set(ref_dig)), sorted(set(ref_dig) - set(am_dig))
                desc = "; ".join(f"{len(v)} {a} in Automodel's against {b} in moeckpt's (e.g. {v[0]})"
                                 for (a, b), v in sorted(diff.items()))
                if not diff and not only_am and not only_mo:
                    checks.append(f"automodel: all {len(same)} tensors equal moeckpt's byte for byte (name, dtype, "
                                  f"shape, SHA-256 of the data)")
                else:
                    msg = (f"automodel: {len(same)} of {len(ref_dig)} tensors equal moeckpt's; differing: {desc or '-'}"
                           f"; only in Automodel's: {only_am[:3] or '-'}; only in moeckpt's: {only_mo[:3] or '-'}")
                    if fp8:
                        msg += (" (expected on FP8 input: Automodel's adapter drops weight_scale_inv and keeps the "
                                "unscaled FP8 codes)")
                    else:
                        failed = True
                        msg = "**" + msg + "**"
                    checks.append(msg)
                log(checks[-1])
    shutil.rmtree(out, ignore_errors=True)

    med = {n: {k: statistics.median(x[k] for x in v) for k in ("wall", "cpu", "flush")} for n, v in runs.items()}
    for n, v in runs.items():
        med[n]["rss"] = max(x["rss"] for x in v)
        med[n]["done"] = statistics.median(x["wall"] + x["flush"] for x in v)
    floors = [n for n in med if n.startswith("floor")]
    floor_ref = min(floors, key=lambda n: med[n]["done"]) if floors else None

    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    moe_desc = ", ".join(str(i) for i in moe_layers)
    lines = [
        f"# from-hf of `{preset}` at one real MoE layer\n",
        f"Run of {when}: `{' '.join(sys.argv)}` on {platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"CPUs, {avail / GIB:.1f} GiB available. Input `moeckpt synth DIR {' '.join(synth_opts)}`: "
        f"{cfg.get('model_type')}, {layers} layer(s) (MoE: {moe_desc}), {n_exp} experts, hidden "
        f"{cfg.get('hidden_size')}, experts {cfg.get('moe_intermediate_size') or cfg.get('intermediate_size')} wide, vocab {args.vocab}, "
        f"{'128x128 block FP8' if fp8 else 'MXFP4 experts' if mxfp4 else 'BF16'}; {in_bytes / GIB:.2f} GiB in {len(inputs)} shards. Median of "
        f"{args.repeat} alternating rounds; wall time around the child, peak RSS (the largest run) and CPU from "
        f"`/usr/bin/time`; flush = the `sync` after the run (moeckpt and the floors fsync their output, Automodel's "
        f"save_file does not); done = wall + flush.\n",
        "| experts | input | path | wall (median) | runs | flush | done | peak RSS | CPU | written | vs floor | "
        "speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {"moeckpt": "`moeckpt from-hf`",
              ep_name: f"`moeckpt from-hf --ep-size {args.ep_size} --ep-rank 0`",
              "automodel": "Automodel: `load_file` + `from_hf` + `save_file`" + (" (FP8: wrong output)" if fp8 else ""),
              "floor": "floor: `cat` + `dd conv=fsync`",
              "floor direct": "floor: `cat` + `dd oflag=direct conv=fsync`"}
    ref = med.get("automodel", {}).get("done")
    for n, v in med.items():
        vs = f"{v['done'] / med[floor_ref]['done']:.2f}x" if floor_ref and n in ("moeckpt", "automodel") else "-"
        sp = f"{ref / v['done']:.1f}x" if ref and not n.startswith("floor") else "-"
        lines.append(f"| {n_exp} | {in_bytes / GIB:.2f} GiB | {labels[n]} | {v['wall']:.2f} s | "
                     f"{', '.join('%.2f' % x['wall'] for x in runs[n])} | {v['flush']:.2f} s | {v['done']:.2f} s | "
                     f"{v['rss'] / GIB:.2f} GiB | {v['cpu']:.1f} s | {written[n] / GIB:.2f} GiB | {vs} | {sp} |")
    lines.append("")
    if floor_ref:
        lines.append(f"- vs floor: done time over the faster floor's ({floor_ref}, {med[floor_ref]['done']:.2f} s, "
                     f"writing moeckpt's {floor_bytes[0] / GIB:.2f} GiB; not shown for the EP row, which writes less); "
                     f"speed-up: Automodel's done time over the row's.")
    if "automodel" in runs:
        ch = [x["child"] for x in runs["automodel"] if x["child"]]
        if ch:
            lines.append("- Automodel inside its child (median): " + ", ".join(
                f"{k} {statistics.median(c[k] for c in ch):.2f} s" for k in ("setup", "load", "from_hf", "save")) +
                " (setup: imports and building the adapter; its save is not fsynced, see flush).")
        if fp8:
            lines.append("- **Automodel's output is wrong on this FP8 input**: 0.7.0's "
                         f"{'Qwen3Moe' if cfg.get('model_type') == 'qwen3_moe' else cfg.get('model_type')} "
                         "StateDictAdapter has no FP8 path; it drops every `weight_scale_inv` and keeps the FP8 codes "
                         "unscaled, so its row times a different (and smaller) output than moeckpt's dequantized BF16. "
                         "Run with `--bf16` for a like-for-like comparison.")
    else:
        lines.append(f"- Automodel's path not run (--automodel {args.automodel}; estimated peak {est_am / GIB:.2f} GiB "
                     f"against {avail / GIB:.2f} GiB available).")
    lines += [f"- {c}" for c in checks]
    text = "\n".join(lines) + "\n"
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text, encoding="utf-8")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
