"""The entry points of a conversion write the same files and stop the same way.

A. One planner decides an HF folder's layout (which tensors each shard holds, in which order):
   ``moeckpt to-hf`` (the CLI: a native folder), ``moeckpt.to_hf_dir`` (Python: a state dict in
   whatever key order it has) and the distributed export (``to_hf_dir(..., device_mesh=...)``, each
   rank's dict in its own order) of the same tensors write byte-identical files, in every mode and
   option; a resume may come from a state dict in another key order.
B. Ctrl-C (SIGINT -> KeyboardInterrupt) during a long Python call stops the engine at its next task,
   and the exception comes only once the engine has stopped and cleaned up, as the CLI does: no
   temporary files, the folder's lock released, no shard completed afterwards; ``resume=True``
   then completes the folder byte-identically. The same for loads (load_hf_checkpoint).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import moeckpt

import preloaded_child
from conftest import trials

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("MOECKPT_CLI", ROOT / "build" / "moeckpt"))
needs_cli = pytest.mark.skipif(not CLI.exists(), reason=f"the CLI is not built at {CLI}")


def final_files(d: Path) -> dict[str, bytes]:
    """The files a finished folder holds (hidden ones, e.g. the lock, left out)."""
    if not d.exists():
        return {}
    return {n: (d / n).read_bytes() for n in sorted(os.listdir(d)) if not n.startswith(".")}


def cli(*args) -> None:
    r = subprocess.run([str(CLI), *map(str, args), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def native_state_dict(d: Path) -> dict:
    sd = {}
    for f in sorted(d.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return sd


def reorder(sd: dict, order: str, seed: int = 0) -> dict:
    """The same tensors in another key order: as the file lists them, reversed, or shuffled."""
    keys = list(sd)
    if order == "reversed":
        keys.reverse()
    elif order == "shuffled":
        random.Random(seed).shuffle(keys)
    else:
        assert order == "file", order
    return {k: sd[k] for k in keys}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """hf(preset) and native(preset, from-hf options): synthesized and converted once per module."""
    root = tmp_path_factory.mktemp("entry")
    cache: dict = {}

    class Folders:
        def hf(self, preset: str) -> Path:
            if preset not in cache:
                d = root / preset / "hf"
                moeckpt.synth(d, preset, seed=1)
                cache[preset] = d
            return cache[preset]

        def native(self, preset: str, from_args: tuple = ()) -> Path:
            key = (preset, tuple(from_args))
            if key not in cache:
                d = root / preset / ("native-" + "-".join(a.strip("-") for a in from_args) if from_args else "native")
                cli("from-hf", self.hf(preset), d, *from_args)
                cache[key] = d
            return cache[key]

    return Folders()


# ------------------------------------------------------------------------------------------------ A

# (id, preset, from-hf options, to-hf options of the CLI, to_hf_dir keywords): the same conversion.
# A fused-QKV layout's TP degree is recorded in the native folder for the CLI; a state dict carries
# no metadata, so Python is given it.
CASES = [
    ("block", "micro", (), [], {}),
    ("none", "micro", (), ["--quant", "none"], {"quant": "none"}),
    ("cast", "micro", (), ["--quant", "cast"], {"quant": "cast"}),
    ("shards", "micro", (), ["--shard-size", "20000"], {"max_shard_bytes": 20000}),
    ("exclude", "micro", (), ["--exclude", r"^model\.layers\.1\.mlp\.experts\.[02]\."],
     {"exclude_key_regex": r"model\.layers\.1\.mlp\.experts\.[02]\."}),
    ("tiny", "tiny", (), [], {}),
    ("tiny-shards", "tiny", (), ["--shard-size", "1000000"], {"max_shard_bytes": 1_000_000}),
    ("tiny-f32", "tiny", ("--dtype", "f32"), [], {}),
    ("automodel-cast", "tiny", ("--compat", "automodel"), ["--compat", "automodel", "--quant", "cast"],
     {"compat": "automodel", "quant": "cast"}),
    ("automodel-none", "tiny", ("--compat", "automodel"), ["--compat", "automodel", "--quant", "none"],
     {"compat": "automodel", "quant": "none"}),
    ("automodel-0.6", "tiny", ("--compat", "automodel-0.6"), ["--compat", "automodel-0.6"],
     {"compat": "automodel-0.6"}),
    ("te", "tiny", ("--attn-backend", "te"), ["--attn-backend", "te"], {"attn_backend": "te"}),
    ("te-automodel", "tiny", ("--attn-backend", "te", "--compat", "automodel"),
     ["--attn-backend", "te", "--compat", "automodel", "--quant", "cast"],
     {"attn_backend": "te", "compat": "automodel", "quant": "cast"}),
    ("v26", "v26-tiny", (), [], {"checkpoint_tp_size": 4}),
    ("v26-tp2", "v26-tiny", (), ["--tp-size", "2"], {"checkpoint_tp_size": 2}),
    ("v26-none", "v26-tiny", (), ["--quant", "none"], {"quant": "none", "checkpoint_tp_size": 4}),
    ("v25", "v25-tiny", (), [], {"checkpoint_tp_size": 4}),
    ("deepseek", "deepseek-v3-tiny", (), [], {}),
    ("deepseek-none", "deepseek-v3-tiny", (), ["--quant", "none"], {"quant": "none"}),
    ("deepseek-automodel", "deepseek-v3-tiny", ("--compat", "automodel"),
     ["--compat", "automodel", "--quant", "cast"], {"compat": "automodel", "quant": "cast"}),
    ("deepseek-q-proj", "deepseek-v3-tiny-q-proj", (), [], {}),
]


@needs_cli
@pytest.mark.parametrize("order", trials(["file", "reversed", "shuffled"], ["reversed"]))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_to_hf_dir_writes_what_the_cli_writes(folders, tmp_path, case, order):
    _, preset, from_args, cli_args, kw = case
    native = folders.native(preset, from_args)
    cli("to-hf", native, tmp_path / "cli", *cli_args)
    config = json.loads((native / "config.json").read_text())
    sd = reorder(native_state_dict(native), order)
    moeckpt.to_hf_dir(sd, tmp_path / "py", config, **kw)
    want, got = final_files(tmp_path / "cli"), final_files(tmp_path / "py")
    assert sorted(got) == sorted(want)
    assert [n for n in want if got[n] != want[n]] == [], f"{order} key order: files differ from the CLI's"


@needs_cli
@pytest.mark.parametrize("order", ["file", "reversed"])
def test_to_hf_dir_writes_what_the_cli_writes_from_every_ep_rank_folder(folders, tmp_path, order):
    # The CLI's to-hf of every EP rank's folder, and Python's of the whole state dict.
    hf = folders.hf("tiny")
    cli("from-hf", hf, tmp_path / "ranks", "--ep-size", "2", "--ep-rank", "all")
    ranks = [tmp_path / "ranks" / f"ep-rank-{r}-of-2" for r in range(2)]
    cli("to-hf", *ranks, tmp_path / "cli", "--shard-size", "1000000")
    sd = reorder(native_state_dict(folders.native("tiny")), order)
    moeckpt.to_hf_dir(sd, tmp_path / "py", hf, max_shard_bytes=1_000_000)
    assert final_files(tmp_path / "py") == final_files(tmp_path / "cli")


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_to_hf_dir_of_an_ep_shard_ignores_key_order(folders, tmp_path, order):
    # One EP rank's shard (no CLI equivalent: the CLI needs every expert): the same files whatever
    # the key order.
    hf = folders.hf("tiny")
    for rank in range(2):
        shard = moeckpt.from_hf_dir(hf, ep_rank=rank, ep_size=2)
        moeckpt.to_hf_dir(shard, tmp_path / f"a{rank}", hf, ep_rank=rank, ep_size=2, max_shard_bytes=1_000_000)
        moeckpt.to_hf_dir(reorder(shard, order, seed=rank), tmp_path / f"b{rank}", hf, ep_rank=rank, ep_size=2,
                          max_shard_bytes=1_000_000)
        assert final_files(tmp_path / f"b{rank}") == final_files(tmp_path / f"a{rank}")


MESH_WORKER = r'''
import json, os, random, sys
from pathlib import Path
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard
from safetensors.torch import load_file
import moeckpt

native, out, shard_size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("ep",))
full = load_file(str(native / "model.safetensors"))
keys = list(full)
random.Random(rank).shuffle(keys)  # every rank's state dict in its own key order
config = json.loads((native / "config.json").read_text())
cfg = moeckpt.adapter_for(config)._config
n = cfg.n_routed_experts
sd = {}
for k in keys:
    v = full[k]
    if cfg.is_grouped_expert_key(k):
        first, count = moeckpt._core.expert_range(n, world, rank)
        v = DTensor.from_local(v[first:first + count].clone(), mesh, [Shard(0)], run_check=False,
                               shape=v.shape, stride=v.stride())
    sd[k] = v
moeckpt.to_hf_dir(sd, out, config, max_shard_bytes=shard_size, device_mesh=mesh)
dist.barrier()
dist.destroy_process_group()
print("exported", flush=True)
'''


@needs_cli
@pytest.mark.parametrize("nproc", trials([2, 3], [2]))
def test_distributed_to_hf_dir_writes_what_the_cli_writes(folders, tmp_path, nproc):
    native = folders.native("tiny")
    cli("to-hf", native, tmp_path / "cli", "--shard-size", "1000000")
    worker = tmp_path / "mesh_worker.py"
    worker.write_text(MESH_WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                        "--master-port", str(29850 + nproc), str(worker), str(native), str(tmp_path / "dist"),
                        "1000000"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert final_files(tmp_path / "dist") == final_files(tmp_path / "cli")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A checkpoint whose conversion takes long enough to be interrupted (128 experts: about 100 MB
    native, 54 shards of 1 MB): the HF folder, its BF16 dequantization, the native state dict saved
    as one file, and the clean conversions' files."""
    root = tmp_path_factory.mktemp("big")
    moeckpt.synth(root / "hf", "tiny", seed=1, experts=128)
    save_file(moeckpt.from_hf_dir(root / "hf"), str(root / "native.safetensors"))
    moeckpt.dequantize_dir(root / "hf", root / "bf16")
    (root / "config.json").write_text((root / "hf" / "config.json").read_text())
    return root


KILL_CHILD = r'''
import sys, moeckpt
from safetensors.torch import load_file
native = load_file(sys.argv[1])
print("ready", flush=True)
moeckpt.to_hf_dir(native, sys.argv[2], sys.argv[3], max_shard_bytes=1 << 20, threads=1)
print("done", flush=True)
'''


def test_resume_accepts_the_same_tensors_in_another_key_order(big, tmp_path):
    # Killed while writing from the file's key order, resumed from the reversed order: the same
    # conversion (the same tensors give the same layout and the same identity).
    clean = tmp_path / "clean"
    native = load_file(str(big / "native.safetensors"))
    moeckpt.to_hf_dir(native, clean, big / "config.json", max_shard_bytes=1 << 20)
    out = tmp_path / "out"
    for _ in range(5):  # until a kill lands mid-write (the first shard is the signal)
        p = preloaded_child.Child(KILL_CHILD, big / "native.safetensors", out, big / "config.json")
        assert p.stdout.readline().strip() == "ready"
        while p.poll() is None and not any(n.endswith(".safetensors") for n in final_files(out)):
            time.sleep(0.001)
        p.kill()
        p.wait()
        p.close()
        if "model.safetensors.index.json" not in final_files(out) and final_files(out):
            break
        shutil.rmtree(out, ignore_errors=True)
    else:
        pytest.skip("no kill landed mid-write")
    moeckpt.to_hf_dir(reorder(native, "reversed"), out, big / "config.json", max_shard_bytes=1 << 20,
                      resume=True)
    assert final_files(out) == final_files(clean)


# ------------------------------------------------------------------------------------------------ B

# Sends SIGINT to itself once the destination holds `k` finished shards, and reports what the folder
# holds at the KeyboardInterrupt and a second later.
SIGINT_CHILD = r'''
import fcntl, json, os, signal, sys, threading, time
import moeckpt
from safetensors.torch import load_file

call, dst, k, big = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
kw = dict(max_shard_bytes=1 << 20, threads=1)
if call == "to_hf_dir":
    native = load_file(os.path.join(big, "native.safetensors"))
    run = lambda: moeckpt.to_hf_dir(native, dst, os.path.join(big, "config.json"), **kw)
elif call == "dequantize_dir":
    run = lambda: moeckpt.dequantize_dir(os.path.join(big, "hf"), dst, **kw)
else:
    run = lambda: moeckpt.quantize_dir(os.path.join(big, "bf16"), dst, **kw)

def names():
    try:
        return os.listdir(dst)
    except FileNotFoundError:
        return []

def shards():
    return sorted(n for n in names() if n.endswith(".safetensors") and not n.startswith("."))

def lock_held():
    try:
        fd = os.open(os.path.join(dst, ".moeckpt.lock"), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)

def state():
    return {"lock_held": lock_held(), "temporaries": sorted(n for n in names() if ".tmp." in n),
            "shards": shards(), "index": "model.safetensors.index.json" in names()}

stop = threading.Event()
def watch():
    while not stop.is_set():
        if len(shards()) >= k:
            os.kill(os.getpid(), signal.SIGINT)
            return
        time.sleep(0.0005)

print("ready", flush=True)
threading.Thread(target=watch, daemon=True).start()
report = {}
try:
    try:
        run()
        report["outcome"] = "done"
    except KeyboardInterrupt:
        report["outcome"] = "interrupted"
        report["at"] = state()
        time.sleep(1)
        report["later"] = state()
except KeyboardInterrupt:  # the signal came after the call returned
    report["outcome"] = "late"
stop.set()
print(json.dumps(report), flush=True)
'''


@pytest.mark.parametrize("where", trials(["first", "middle"], ["middle"]))
@pytest.mark.parametrize("call", ["to_hf_dir", "dequantize_dir", "quantize_dir"])
def test_ctrl_c_raises_only_after_the_engine_stopped_and_cleaned_up(big, tmp_path, call, where):
    clean = tmp_path / "clean"
    if call == "to_hf_dir":
        moeckpt.to_hf_dir(load_file(str(big / "native.safetensors")), clean, big / "config.json",
                          max_shard_bytes=1 << 20)
    elif call == "dequantize_dir":
        moeckpt.dequantize_dir(big / "hf", clean, max_shard_bytes=1 << 20)
    else:
        moeckpt.quantize_dir(big / "bf16", clean, max_shard_bytes=1 << 20)
    want = final_files(clean)
    total = len([n for n in want if n.endswith(".safetensors")])
    assert total > 10
    k = 1 if where == "first" else total // 2
    out = tmp_path / "out"
    r = preloaded_child.run(SIGINT_CHILD, call, out, k, big)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["outcome"] == "interrupted", report
    at, later = report["at"], report["later"]
    assert not at["lock_held"], "KeyboardInterrupt while the engine still held the folder's lock"
    assert at["temporaries"] == [], "KeyboardInterrupt before the engine removed its temporary files"
    assert later == at, "the engine went on writing after the KeyboardInterrupt"
    assert not at["index"]
    got = final_files(out)
    assert all(want.get(n) == d for n, d in got.items())  # every finished shard is a clean run's
    # resume=True completes the folder byte-identically.
    if call == "to_hf_dir":
        moeckpt.to_hf_dir(load_file(str(big / "native.safetensors")), out, big / "config.json",
                          max_shard_bytes=1 << 20, resume=True)
    elif call == "dequantize_dir":
        moeckpt.dequantize_dir(big / "hf", out, max_shard_bytes=1 << 20, resume=True)
    else:
        moeckpt.quantize_dir(big / "bf16", out, max_shard_bytes=1 << 20, resume=True)
    assert final_files(out) == want


# load_hf_checkpoint with every destination staged (the path of CUDA destinations): the engine's
# threads hand pieces to Python; the third piece sends SIGINT.
LOAD_CHILD = r'''
import json, os, signal, sys, time
import torch, moeckpt
from moeckpt import load as L

hf = sys.argv[1]
dests = {k: torch.empty_like(v) for k, v in moeckpt.from_hf_dir(hf).items()}
count = {"n": 0, "signal_at": 0}
stage = L._Staging.__call__
def counted(self, index, offset, piece):
    stage(self, index, offset, piece)
    count["n"] += 1
    if count["n"] == count["signal_at"]:
        os.kill(os.getpid(), signal.SIGINT)
L._Staging.__call__ = counted
moeckpt.load_hf_checkpoint(dests, hf, threads=2, _stage_all=True)
report = {"total": count["n"]}
count.update(n=0, signal_at=3)
try:
    moeckpt.load_hf_checkpoint(dests, hf, threads=2, _stage_all=True)
    report["outcome"] = "done"
except KeyboardInterrupt:
    report["outcome"] = "interrupted"
    report["at"] = count["n"]
    time.sleep(1)
    report["later"] = count["n"]
print(json.dumps(report), flush=True)
'''


def test_ctrl_c_stops_load_hf_checkpoint(big):
    r = preloaded_child.run(LOAD_CHILD, big / "hf")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["outcome"] == "interrupted", report
    assert report["total"] > 100, report
    # Stopped at the next task, not after the whole load; nothing delivered after the exception.
    assert report["at"] < report["total"] // 2, report
    assert report["later"] == report["at"], report
