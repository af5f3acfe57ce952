"""moeckpt.load_hf_checkpoint against hostile checkpoints and destinations: a refusal leaves every
destination exactly as it was (strict, data refusals anywhere in the checkpoint, bad destinations);
every destination dtype is either converted exactly as ``dest.copy_(value)`` or refused naming the
tensor; destinations the engine cannot write (meta, sparse, subclasses, shared, read-only memory)
are refused naming the tensor."""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import moeckpt
from moeckpt import _core
from moeckpt import _tensors as T

ROOT = Path(__file__).resolve().parents[2]
MALFORMED = ROOT / "tests" / "data" / "malformed"


def _snapshot(dests: dict) -> dict:
    return {k: v.detach().clone() for k, v in dests.items()}


def _bits(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _assert_untouched(dests: dict, before: dict) -> None:
    changed = [k for k in before if _bits(dests[k]) != _bits(before[k])]
    assert changed == [], f"{len(changed)} of {len(before)} destinations were written: {changed[:5]}"


def _sentinels(folder, dtype=torch.bfloat16) -> dict:
    """Destinations of a folder's own layout (its headers alone), every element 7."""
    layout, _, _ = _core.from_hf_layout(str(folder), 1, 0, T.out_dtype_name(dtype), "none")
    return {n: torch.full(s, 7, dtype=T.torch_dtype(dt)) for n, dt, s in layout}


def _tensor_at(folder: Path, key: str) -> tuple[Path, int, dict]:
    """(shard, absolute byte offset of the data, header entry) of a checkpoint tensor."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / index["weight_map"][key]
    with open(shard, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return shard, 8 + n + header[key]["data_offsets"][0], header[key]


def _patch(folder: Path, key: str, offset: int, data: bytes) -> None:
    shard, at, _ = _tensor_at(folder, key)
    with open(shard, "r+b") as f:
        f.seek(at + offset)
        f.write(data)


# ---------------------------------------------------------------------------------------------
# 1. All or nothing


def test_strict_refuses_a_destination_without_source_before_writing(tiny_dir):
    dests = _sentinels(tiny_dir)
    dests["model.layers.0.extra.weight"] = torch.full((4,), 7.0)
    before = _snapshot(dests)
    with pytest.raises(moeckpt.ConfigMismatchError, match="model.layers.0.extra.weight"):
        moeckpt.load_hf_checkpoint(dests, tiny_dir, strict=True)
    _assert_untouched(dests, before)
    report = moeckpt.load_hf_checkpoint(dests, tiny_dir, strict=False)  # then it loads
    assert report.missing == ["model.layers.0.extra.weight"]


def _data_refusal_cases() -> list:
    """Malformed-corpus folders in the HF layout whose headers plan (from_hf_layout) but whose
    from-hf refuses their data: the refusals a load can only make by reading the bytes."""
    cases = []
    for d in sorted(MALFORMED.iterdir()) if MALFORMED.is_dir() else []:
        try:
            expect = json.loads((d / "expect.json").read_text())
        except OSError:
            continue
        want = expect["commands"].get("from-hf", {}).get("error")
        if expect.get("layout") != "hf" or expect.get("ranks") or not want:
            continue
        try:
            _core.from_hf_layout(str(d), 1, 0, "BF16", "none")
        except moeckpt.Error:
            continue  # refused from the headers: before any read, a fortiori before any write
        cases.append(pytest.param(d, want, id=d.name))
    return cases


@pytest.mark.parametrize("stage_all", [False, True])
@pytest.mark.parametrize("folder,error", _data_refusal_cases())
def test_data_refusals_leave_every_destination_untouched(folder, error, stage_all):
    # NaN codes, zero / negative / NaN / infinite / overflowing scales, MXFP4 E8M0 NaN and
    # overflow, in any shard and any position of the plan (the brief's case: expert_fp8_nan_7f
    # wrote 14 of 23 destinations before raising).
    dests = _sentinels(folder)
    before = _snapshot(dests)
    with pytest.raises(moeckpt.Error, match=re.escape(error)):
        moeckpt.load_hf_checkpoint(dests, folder, _stage_all=stage_all)
    _assert_untouched(dests, before)


def test_data_refusal_cases_cover_the_numeric_refusals():
    names = {p.id for p in _data_refusal_cases()}
    for want in ("expert_fp8_nan_7f", "dense_fp8_nan_7f", "attention_fp8_nan_ff", "expert_scale_zero",
                 "expert_scale_nan", "expert_scale_overflows", "dense_scale_overflows_bf16",
                 "v26_mx_scale_nan", "v26_mx_scale_overflows"):
        assert want in names, want


@pytest.mark.parametrize("threads", [1, 0])
@pytest.mark.parametrize("what", ["nan_code", "zero_scale", "nan_scale", "huge_scale"])
def test_a_bad_value_in_the_last_tensor_leaves_the_model_untouched(tiny_dir, tmp_path, what, threads):
    # The last FP8 weight of the last shard: every other tensor of the plan comes before it.
    folder = tmp_path / "hf"
    shutil.copytree(tiny_dir, folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    last = max(index.values())
    key = sorted(k for k, v in index.items() if v == last and k.endswith("_scale_inv"))[-1][:-len("_scale_inv")]
    if what == "nan_code":
        _patch(folder, key, 3, b"\x7f")
    else:
        value = {"zero_scale": 0.0, "nan_scale": float("nan"), "huge_scale": 3e38}[what]
        _patch(folder, key + "_scale_inv", 0, struct.pack("<f", value))
    dests = _sentinels(folder)
    before = _snapshot(dests)
    with pytest.raises(moeckpt.NumericError):
        moeckpt.load_hf_checkpoint(dests, folder, threads=threads)
    _assert_untouched(dests, before)


def test_a_shape_or_dtype_refusal_leaves_the_model_untouched(tiny_dir):
    dests = _sentinels(tiny_dir)
    before = _snapshot(dests)
    bad = dict(dests)
    bad["model.norm.weight"] = torch.full((3,), 7, dtype=torch.bfloat16)  # sorts late
    with pytest.raises(moeckpt.ConfigMismatchError, match="model.norm.weight"):
        moeckpt.load_hf_checkpoint(bad, tiny_dir)
    bad["model.norm.weight"] = torch.zeros(dests["model.norm.weight"].shape, dtype=torch.int32)
    with pytest.raises(moeckpt.InvalidArgumentError, match="model.norm.weight"):
        moeckpt.load_hf_checkpoint(bad, tiny_dir)
    _assert_untouched(dests, before)


def test_a_successful_load_reads_the_rank_bytes_once_in_its_report(tiny_dir):
    # The checking pass is not counted: bytes_read is what the writing pass read, as before.
    dests = _sentinels(tiny_dir)
    r = moeckpt.load_hf_checkpoint(dests, tiny_dir)
    hf = sum(p.stat().st_size for p in Path(tiny_dir).glob("*.safetensors"))
    assert r.bytes_read <= hf


# ---------------------------------------------------------------------------------------------
# 2. Destination dtypes

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("deq", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("dest_dtype", FLOATS, ids=str)
def test_float_destinations_get_what_copy_gives(tiny_dir, dest_dtype, deq):
    ref = moeckpt.from_hf_dir(tiny_dir, dtype=deq)
    dests = {k: torch.full(v.shape, 7, dtype=dest_dtype) for k, v in ref.items()}
    moeckpt.load_hf_checkpoint(dests, tiny_dir, dtype=deq)
    wrong = [k for k, v in ref.items()
             if _bits(dests[k]) != _bits(torch.empty(v.shape, dtype=dest_dtype).copy_(v))]
    assert wrong == []


# F32 values whose F16 / BF16 / F64 conversions are the edge cases: overflow to inf at 65520,
# the largest finite, ties to even, subnormals and their ties, signed zeros, infinities, NaNs with
# payloads (copy_ keeps F16 payload bits, turns BF16 NaNs into 0xFFFF).
_EDGE_BITS = [0x477FE000, 0x477FEFFF, 0x477FF000, 0x47800000, 0x7F7FFFFF, 0x7F800000, 0xFF800000,
              0x33800000, 0x33000000, 0x33000001, 0x33400000, 0x33C00000, 0x387FC000, 0x387FE000,
              0x38800000, 0x3F801000, 0x3F803000, 0x3F800FFF, 0x00000001, 0x80000000, 0x00000000,
              0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA5A5A5, 0xFFFFFFFF, 0x3F808000, 0x3F818000]


@pytest.mark.parametrize("dest_dtype", FLOATS, ids=str)
def test_edge_values_convert_as_copy_does(tiny_dir, tmp_path, dest_dtype):
    folder = tmp_path / "hf"
    shutil.copytree(tiny_dir, folder)
    key = "model.layers.1.mlp.gate.weight"  # F32 in the checkpoint, copied as is
    _, _, entry = _tensor_at(folder, key)
    assert entry["dtype"] == "F32"
    n = 1
    for d in entry["shape"]:
        n *= d
    g = torch.Generator().manual_seed(3)
    rand = torch.randint(0, 2**32, (n,), generator=g, dtype=torch.int64).tolist()
    values = (_EDGE_BITS + rand)[:n]
    _patch(folder, key, 0, struct.pack(f"<{n}I", *values))
    src = torch.tensor(values, dtype=torch.int64).to(torch.int32).view(torch.float32).reshape(entry["shape"])
    dest = torch.full(entry["shape"], 7, dtype=dest_dtype)
    moeckpt.load_hf_checkpoint({key: dest}, folder, strict=True, dtype=torch.bfloat16)
    want = torch.empty_like(dest).copy_(src)
    assert _bits(dest) == _bits(want)


UNCONVERTED = [torch.float8_e4m3fn, torch.float8_e5m2, torch.int8, torch.uint8, torch.int16, torch.int32,
               torch.int64, torch.bool, torch.complex64,
               *[getattr(torch, n) for n in ("float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "uint16",
                                             "uint32") if hasattr(torch, n)]]


@pytest.mark.parametrize("dest_dtype", UNCONVERTED, ids=str)
def test_other_destination_dtypes_are_refused_naming_the_tensor(tiny_dir, dest_dtype):
    dests = _sentinels(tiny_dir)
    before = _snapshot(dests)
    key = "model.layers.0.self_attn.q_proj.weight"
    bad = dict(dests)
    bad[key] = torch.zeros(dests[key].shape, dtype=dest_dtype)
    with pytest.raises(moeckpt.InvalidArgumentError, match=f"tensor '{key}'"):
        moeckpt.load_hf_checkpoint(bad, tiny_dir, dtype=torch.bfloat16)
    _assert_untouched(dests, before)


# ---------------------------------------------------------------------------------------------
# 3. Destinations the engine cannot write


def _meta(shape, dtype):
    return torch.empty(shape, dtype=dtype, device="meta")


def _fake(shape, dtype):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return torch.empty(shape, dtype=dtype)


BAD_DESTINATIONS = {
    "meta": (_meta, "meta tensor"),
    "meta_strided": (lambda s, d: _meta(s[::-1], d).t(), "meta tensor"),
    "sparse_coo": (lambda s, d: torch.zeros(s, dtype=d).to_sparse(), "layout"),
    "sparse_csr": (lambda s, d: torch.zeros(s, dtype=d).to_sparse_csr(), "layout"),
    "mkldnn": (lambda s, d: torch.zeros(s).to_mkldnn(), "layout"),
    "fake_tensor": (_fake, "FakeTensor"),
    "lazy_parameter": (lambda s, d: torch.nn.parameter.UninitializedParameter(dtype=d), "uninitialized"),
    "expanded": (lambda s, d: torch.zeros(s[1:], dtype=d).expand(s), "share memory"),
}


@pytest.mark.parametrize("kind", list(BAD_DESTINATIONS))
def test_destinations_that_cannot_be_written_are_refused_naming_them(tiny_dir, kind):
    make, match = BAD_DESTINATIONS[kind]
    dests = _sentinels(tiny_dir)
    before = _snapshot(dests)
    key = "model.layers.0.self_attn.q_proj.weight"
    bad = dict(dests)
    bad[key] = make(tuple(dests[key].shape), dests[key].dtype)
    with pytest.raises(moeckpt.InvalidArgumentError, match=f"tensor '{key}'.*{match}"):
        moeckpt.load_hf_checkpoint(bad, tiny_dir, dtype=torch.bfloat16)
    _assert_untouched(dests, before)


def test_a_whole_meta_model_is_refused(tiny_dir):
    layout = _sentinels(tiny_dir)
    with torch.device("meta"):
        dests = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in layout.items()}
    with pytest.raises(moeckpt.InvalidArgumentError, match="is a meta tensor"):
        moeckpt.load_hf_checkpoint(dests, tiny_dir)


def test_destinations_sharing_memory_are_refused(tiny_dir):
    dests = _sentinels(tiny_dir)
    before = _snapshot(dests)
    bad = dict(dests)
    bad["lm_head.weight"] = dests["model.embed_tokens.weight"]  # tied weights
    with pytest.raises(moeckpt.InvalidArgumentError, match="shares memory with"):
        moeckpt.load_hf_checkpoint(bad, tiny_dir)
    _assert_untouched(dests, before)


def test_a_negative_view_gets_the_values(tiny_dir):
    ref = moeckpt.from_hf_dir(tiny_dir)
    key = "model.layers.0.self_attn.q_proj.weight"
    neg = torch._neg_view(torch.zeros_like(ref[key]))
    moeckpt.load_hf_checkpoint({key: neg}, tiny_dir, dtype=torch.bfloat16)
    assert torch.equal(neg, ref[key])


def test_read_only_memory_is_refused_not_a_crash(tiny_dir, tmp_path):
    ref = moeckpt.from_hf_dir(tiny_dir)
    key = "model.layers.0.self_attn.q_proj.weight"
    shape = tuple(ref[key].shape)
    raw = tmp_path / "weights.bin"
    raw.write_bytes(bytes(ref[key].numel() * 2))
    code = (
        "import warnings, numpy as np, torch, moeckpt\n"
        "warnings.simplefilter('ignore')\n"
        f"mm = np.memmap({str(raw)!r}, dtype=np.uint16, mode='r', shape={shape})\n"
        "t = torch.from_numpy(mm).view(torch.bfloat16)\n"
        "try:\n"
        f"    moeckpt.load_hf_checkpoint({{{key!r}: t}}, {str(tiny_dir)!r}, dtype=torch.bfloat16)\n"
        "except moeckpt.InvalidArgumentError as e:\n"
        "    print('refused:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])  # -11 before: SIGSEGV
    assert f"refused: moeckpt: tensor '{key}': is in read-only memory" in r.stdout


def test_parameters_see_the_load_as_an_in_place_write(tiny_dir):
    ref = moeckpt.from_hf_dir(tiny_dir)
    key = "model.layers.0.self_attn.q_proj.weight"
    p = torch.nn.Parameter(torch.zeros_like(ref[key]))
    v = p._version
    moeckpt.load_hf_checkpoint({key: p}, tiny_dir, dtype=torch.bfloat16)
    assert torch.equal(p.detach(), ref[key]) and p._version > v


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dest_dtype", FLOATS, ids=str)
def test_cuda_float_destinations_get_what_copy_gives(tiny_dir, dest_dtype):
    ref = moeckpt.from_hf_dir(tiny_dir)
    dests = {k: torch.full(v.shape, 7, dtype=dest_dtype, device="cuda") for k, v in ref.items()}
    moeckpt.load_hf_checkpoint(dests, tiny_dir, dtype=torch.bfloat16)
    for k, v in ref.items():
        assert _bits(dests[k]) == _bits(torch.empty(v.shape, dtype=dest_dtype).copy_(v)), k


# ---------------------------------------------------------------------------------------------
# A distributed load: one rank's refusal stops every rank's writes.


def _rank_main(hf_dir: str) -> None:  # run by torchrun (see below)
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    dist.init_process_group("gloo")
    try:
        mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("ep",))
        layout = _sentinels(hf_dir)
        dests = {k: distribute_tensor(v, mesh, [Shard(0) if k.endswith(("gate_and_up_projs", "down_projs"))
                                               else Replicate()]) for k, v in layout.items()}
        before = {k: v.to_local().clone() for k, v in dests.items()}
        try:
            moeckpt.load_hf_checkpoint(dests, hf_dir)
            raise SystemExit(f"rank {dist.get_rank()}: not refused")
        except moeckpt.NumericError as e:
            print(f"rank {dist.get_rank()} refused: {e}")
        changed = [k for k in before if _bits(dests[k].to_local()) != _bits(before[k])]
        assert changed == [], (dist.get_rank(), changed)
        # As the other workers do: a rank tearing gloo down while its peer still reads the last
        # collective can abort the peer ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_one_ranks_refusal_stops_every_rank(tmp_path):
    # expert_fp8_nan_7f: the NaN is in expert 2 of 4, so only rank 1 of 2 reads it; rank 0 used to
    # load its half of the model and return.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", "29655", __file__, str(MALFORMED / "expert_fp8_nan_7f")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "rank 0 refused: moeckpt: rank 1 refused the load" in r.stdout, r.stdout


if __name__ == "__main__":
    _rank_main(sys.argv[1])
