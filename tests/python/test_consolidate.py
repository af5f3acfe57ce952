"""moeckpt consolidate and the sharded-save source, on saves the real writers make on CPU: torch's
HuggingFaceStorageWriter(save_distributed=True) and NeMo Automodel 0.7.0's _HuggingFaceStorageWriter
(save_sharded=True, F32 pieces + .hf_metadata/) under torchrun with gloo (dcp_sharded_save.py).
The output is compared with the full tensors the ranks split, with torch's and Automodel's own
consolidators, and with quantize of the consolidated folder; each refusal has its case."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import moeckpt
from conftest import trials

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CLI = Path(os.environ.get("MOECKPT_CLI", ROOT / "build" / "moeckpt"))
needs_cli = pytest.mark.skipif(not CLI.exists(), reason=f"the CLI is not built at {CLI}")

# Every placement the writers see: uneven row shards, a zero-size piece (a 2-row tensor over 3
# ranks), column shards, replicated tensors, experts on their owner rank only, int and bool
# tensors, two output files.
MIXED = [
    {"name": "model.embed_tokens.weight", "dtype": "BF16", "shape": [37, 16], "placement": "shard0", "file": 1},
    {"name": "model.layers.0.mlp.gate.weight", "dtype": "F32", "shape": [8, 18], "placement": "shard1", "file": 1},
    {"name": "model.layers.0.mlp.experts.0.up_proj.weight", "dtype": "BF16", "shape": [24, 16],
     "placement": "rank:1", "file": 2},
    {"name": "model.layers.0.mlp.experts.1.up_proj.weight", "dtype": "BF16", "shape": [24, 16],
     "placement": "rank:2", "file": 2},
    {"name": "model.norm.weight", "dtype": "BF16", "shape": [16], "placement": "replicate", "file": 2},
    {"name": "lm_head.weight", "dtype": "F16", "shape": [2, 16], "placement": "shard0", "file": 2},
    {"name": "buffers.counts", "dtype": "I64", "shape": [5, 2], "placement": "shard0", "file": 1},
    {"name": "buffers.mask", "dtype": "BOOL", "shape": [7], "placement": "shard0", "file": 1},
]
FLOATS = [t for t in MIXED if t["dtype"] in ("BF16", "F32", "F16")]
# What Automodel's addons save beside config.json in .hf_metadata/ (copied into the output).
TOKENIZER = {"tokenizer.json": '{"version": "1.0", "model": {"type": "BPE"}}',
             "tokenizer_config.json": '{"model_max_length": 4096}',
             "generation_config.json": '{"do_sample": true, "temperature": 0.7}'}


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_save(tmp: Path, spec: dict, world: int, port: int = 0) -> Path:
    """Runs dcp_sharded_save.py under torchrun; returns the save folder (its full tensors in
    ../reference/full.safetensors)."""
    spec_path = tmp / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
                        "--master-port", str(port or free_port()), str(HERE / "dcp_sharded_save.py"), str(spec_path),
                        str(tmp / "save")], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp / "save"


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=600)
    if ok:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def tensors_of(folder: Path) -> dict[str, tuple[torch.Tensor, str]]:
    out = {}
    for p in sorted(folder.glob("*.safetensors")):
        with safe_open(str(p), "pt") as f:
            for k in f.keys():
                out[k] = (f.get_tensor(k), p.name)
    return out


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else \
        t.contiguous().numpy().tobytes()


def assert_same_tensors(expected: dict[str, torch.Tensor], folder: Path) -> None:
    got = tensors_of(folder)
    assert sorted(got) == sorted(expected)
    for k, t in expected.items():
        g = got[k][0]
        assert (g.dtype, tuple(g.shape)) == (t.dtype, tuple(t.shape)), k
        assert raw(g) == raw(t), k


def index_of(folder: Path) -> dict:
    return json.loads((folder / "model.safetensors.index.json").read_text())


@pytest.fixture(scope="module")
def torch_save(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("torch-save")
    return write_save(tmp, {"seed": 3, "tensors": MIXED}, 3)


@pytest.fixture(scope="module")
def automodel_save(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("automodel-save")
    spec = {"seed": 5, "writer": "automodel", "tensors": MIXED, "config": {"model_type": "llama"},
            "metadata_files": TOKENIZER}
    return write_save(tmp, spec, 3)


@pytest.fixture(scope="module")
def mimo_save(tmp_path_factory, tiny_dir) -> tuple[Path, Path]:
    """The tiny MiMo preset dequantized to BF16 and saved by torch's writer over 4 ranks, 3 output
    files (the family's config in .hf_metadata/): (save, the BF16 folder it was made from)."""
    tmp = tmp_path_factory.mktemp("mimo-save")
    bf16 = tmp / "bf16"
    cli("dequantize", str(tiny_dir), str(bf16), "--quiet")
    spec = {"source": str(bf16), "files": 3, "config": json.loads((bf16 / "config.json").read_text())}
    return write_save(tmp, spec, 4), bf16


@needs_cli
def test_torch_save_consolidates_to_the_full_tensors(torch_save, tmp_path):
    out = tmp_path / "out"
    cli("consolidate", str(torch_save), str(out), "--config", str(ROOT / "tests" / "data" / "ragged" / "hf" / "config.json"),
        "--quiet", ok=False)  # a known family's config contradicts these tensors: refused below
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama"}))
    cli("consolidate", str(torch_save), str(out), "--config", str(cfg), "--quiet")
    full = load_file(str(torch_save.parent / "reference" / "full.safetensors"))
    assert_same_tensors(full, out)
    # Each tensor in the file its mapping index names (the files' IIIII), an index listing them.
    want = {t["name"]: f"model-{t['file']:05d}-of-00002.safetensors" for t in MIXED}
    assert index_of(out)["weight_map"] == dict(sorted(want.items()))
    assert json.loads((out / "config.json").read_text()) == {"model_type": "llama"}


@needs_cli
def test_torch_save_equals_torchs_own_consolidator(tmp_path):
    # torch's consolidator crashes on int/bool tensors (torch.finfo): a float-only save.
    save = write_save(tmp_path, {"seed": 7, "tensors": FLOATS}, 4)
    from torch.distributed.checkpoint._consolidate_hf_safetensors import consolidate_safetensors_files
    ref = tmp_path / "torch-out"
    ref.mkdir()
    consolidate_safetensors_files(str(save), str(ref), {t["name"]: t["file"] for t in FLOATS})
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama"}))  # any model consolidates
    out = tmp_path / "out"
    cli("consolidate", str(save), str(out), "--config", str(cfg), "--quiet", "--threads", "2")
    assert_same_tensors({k: v for k, (v, _) in tensors_of(ref).items()}, out)
    assert {k: f for k, (_, f) in tensors_of(out).items()} == {k: f for k, (_, f) in tensors_of(ref).items()}
    assert index_of(out) == index_of(ref)


@needs_cli
@pytest.mark.parametrize("cast", [None, torch.float16, torch.bfloat16])
def test_automodel_save_equals_automodels_consolidator(automodel_save, tmp_path, cast):
    from nemo_automodel.components.checkpoint._backports.consolidate_hf_safetensors import (
        consolidate_safetensors_files)
    meta = automodel_save / ".hf_metadata"
    mapping = json.loads((meta / "fqn_to_file_index_mapping.json").read_text())
    dtypes = json.loads((meta / "fqn_to_dtype_mapping.json").read_text())
    # Automodel's reads the pieces of its own save; it skips int/bool casting like moeckpt does.
    ref = tmp_path / "automodel-out"
    ref.mkdir()
    consolidate_safetensors_files(str(automodel_save), str(ref), mapping, cast_dtype=cast,
                                  fqn_to_dtype_mapping=dtypes)
    out = tmp_path / "out"
    report = moeckpt.consolidate_dir(automodel_save, out, dtype=cast)
    assert report.tensors == len(MIXED)
    expected = {k: v for k, (v, _) in tensors_of(ref).items()}
    assert_same_tensors(expected, out)
    assert {k: f for k, (_, f) in tensors_of(out).items()} == {k: f for k, (_, f) in tensors_of(ref).items()}
    assert index_of(out)["weight_map"] == index_of(ref)["weight_map"]
    # The tokenizer's files beside config.json; the save's own mappings are not part of the output.
    assert {n: (out / n).read_text() for n in TOKENIZER} == TOKENIZER
    assert not (out / "fqn_to_file_index_mapping.json").exists()
    if cast is None:  # the HF dtypes restored: the full tensors as the model had them
        assert_same_tensors(load_file(str(automodel_save.parent / "reference" / "full.safetensors")), out)
    else:  # the cast: F32-mapped and non-float tensors kept
        got = tensors_of(out)
        assert got["model.layers.0.mlp.gate.weight"][0].dtype == torch.float32
        assert got["buffers.counts"][0].dtype == torch.int64
        assert got["model.norm.weight"][0].dtype == cast


@needs_cli
def test_inspect_reports_the_save(automodel_save, torch_save):
    j = json.loads(cli("inspect", "--json", "--headers-only", str(torch_save)).stdout)
    assert j["sharded_save"]["writer"] == "torch" and j["sharded_save"]["ranks"] == 3
    assert j["sharded_save"]["empty_pieces"] >= 1 and j["sharded_save"]["output_files"] == 2
    j = json.loads(cli("inspect", "--json", "--headers-only", str(automodel_save)).stdout)
    assert j["sharded_save"]["writer"] == "automodel"
    assert j["sharded_save"]["restored_dtypes"]["F32->BF16"] == 4


@needs_cli
def test_mimo_save_through_every_command(mimo_save, tmp_path):
    save, bf16 = mimo_save
    out = tmp_path / "out"
    cli("consolidate", str(save), str(out), "--quiet")
    assert_same_tensors({k: v for k, (v, _) in tensors_of(bf16).items()}, out)
    assert "bitwise equal" in cli("verify", str(bf16), str(save)).stdout
    # One pass to FP8 is quantize of the consolidated folder, byte for byte (same layout).
    one, two = tmp_path / "one", tmp_path / "two"
    cli("consolidate", str(save), str(one), "--quant", "block", "--shard-size", "4000000", "--quiet")
    cli("quantize", str(out), str(two), "--shard-size", "4000000", "--quiet")
    assert {p.name: p.read_bytes() for p in one.iterdir()} == {p.name: p.read_bytes() for p in two.iterdir()}
    # The save is an HF source for from-hf (an EP rank), quantize and dequantize too.
    for cmd, extra in [("from-hf", ["--ep-size", "2", "--ep-rank", "1"]), ("quantize", []),
                       ("dequantize", ["--dtype", "f32"])]:
        a, b = tmp_path / f"{cmd}-save", tmp_path / f"{cmd}-out"
        cli(cmd, str(save), str(a), *extra, "--quiet")
        cli(cmd, str(out), str(b), *extra, "--quiet")
        assert {p.name: p.read_bytes() for p in a.iterdir()} == {p.name: p.read_bytes() for p in b.iterdir()}, cmd


@needs_cli
def test_gpt_oss_save_consolidates_to_its_published_mxfp4(tmp_path):
    """A gpt-oss training save holds the HF BF16 layout (Automodel's to_hf: the experts stacked as
    gate_up_proj [E, hidden, 2I]); consolidate --quant block writes the published MXFP4 in one pass."""
    hf, bf16 = tmp_path / "hf", tmp_path / "bf16"
    moeckpt.synth(hf, "gpt-oss-tiny", seed=2)
    cli("dequantize", str(hf), str(bf16), "--quiet")
    spec = {"source": str(bf16), "files": 3, "config": json.loads((bf16 / "config.json").read_text())}
    (tmp_path / "dcp").mkdir()
    save = write_save(tmp_path / "dcp", spec, 4)
    out = tmp_path / "out"
    cli("consolidate", str(save), str(out), "--quant", "block", "--quiet")
    want = {k: raw(v) for k, (v, _) in tensors_of(hf).items()}
    got = {k: raw(v) for k, (v, _) in tensors_of(out).items()}
    assert got == want
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "mxfp4"
    plain = tmp_path / "plain"
    cli("consolidate", str(save), str(plain), "--quiet")
    assert {k: raw(v) for k, (v, _) in tensors_of(plain).items()} == {k: raw(v) for k, (v, _) in tensors_of(bf16).items()}


def test_load_hf_checkpoint_from_the_save(mimo_save):
    save, bf16 = mimo_save
    want = moeckpt.from_hf_dir(bf16)
    from_folder = {k: torch.empty_like(v) for k, v in want.items()}
    from_save = {k: torch.empty_like(v) for k, v in want.items()}
    moeckpt.load_hf_checkpoint(from_folder, bf16)
    report = moeckpt.load_hf_checkpoint(from_save, save)
    assert report.tensors == len(want)
    assert all(raw(from_save[k]) == raw(from_folder[k]) == raw(want[k]) for k in want)


@needs_cli
@pytest.mark.parametrize("nproc", trials([2, 4], [2]))
def test_torchrun_workers_write_what_one_process_writes(mimo_save, tmp_path, nproc):
    save, _ = mimo_save
    one, many = tmp_path / "one", tmp_path / "many"
    cli("consolidate", str(save), str(one), "--quant", "block", "--shard-size", "3000000", "--quiet")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--no-python", "--nproc-per-node",
                        str(nproc), "--master-port", str(free_port()), str(CLI), "consolidate", str(save),
                        str(many), "--quant", "block", "--shard-size", "3000000", "--quiet", "--distributed",
                        "--wait", "120"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in many.iterdir()} == {p.name: p.read_bytes() for p in one.iterdir()}


# Refusals: each names the tensor (or file) and what is wrong, and leaves no output.

def refused(src: Path, dst: Path, *words: str, extra: tuple[str, ...] = ()) -> str:
    r = cli("consolidate", str(src), str(dst), "--quiet", *extra, ok=False)
    assert r.returncode != 0, r.stdout
    msg = r.stderr
    assert msg.count("\n") == 1, msg
    for w in words:
        assert w in msg, msg
    assert not dst.exists() or not any(dst.iterdir()), list(dst.iterdir())
    return msg


def copy_save(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite(path: Path, dtype_of: dict | None = None, metadata: dict | None = None) -> None:
    """Rewrites a torch-style file (safetensors' serializer), changing tensor dtypes (same byte
    size) or __metadata__ entries."""
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8:8 + n])
    data = path.read_bytes()[8 + n:]
    for k, d in (dtype_of or {}).items():
        header[k]["dtype"] = d
    header["__metadata__"].update(metadata or {})
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@needs_cli
def test_refusals(torch_save, automodel_save, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama"}))
    c = ("--config", str(cfg))
    # A rank's file missing: a gap, named by region.
    s = copy_save(torch_save, tmp_path / "gap")
    (s / "shard-00002-model-00001-of-00002.safetensors").unlink()
    refused(s, tmp_path / "o1", "tensor 'buffers.counts'", "elements [2:4, 0:2] are in no piece", extra=c)
    with pytest.raises(moeckpt.MalformedFileError, match=r"elements \[2:4, 0:2\] are in no piece"):
        moeckpt.consolidate_dir(s, tmp_path / "o1-py", config=cfg)
    assert not (tmp_path / "o1-py").exists() or not any((tmp_path / "o1-py").iterdir())
    # A stale file of an earlier save with more ranks: overlapping pieces.
    s = copy_save(torch_save, tmp_path / "stale")
    shutil.copy(s / "shard-00001-model-00001-of-00002.safetensors", s / "shard-00004-model-00001-of-00002.safetensors")
    refused(s, tmp_path / "o2", "overlaps", extra=c)
    # Files of a save with another number of output files.
    s = copy_save(torch_save, tmp_path / "files")
    (s / "shard-00003-model-00002-of-00002.safetensors").rename(s / "shard-00003-model-00002-of-00003.safetensors")
    refused(s, tmp_path / "o3", "files of two saves", extra=c)
    # Pieces of one tensor in different dtypes.
    s = copy_save(torch_save, tmp_path / "dtypes")
    rewrite(s / "shard-00002-model-00001-of-00002.safetensors", dtype_of={"model.embed_tokens.weight": "F16"})
    refused(s, tmp_path / "o4", "model.embed_tokens.weight", "F16", "BF16", extra=c)
    # Another DCP_VERSION.
    s = copy_save(torch_save, tmp_path / "version")
    rewrite(s / "shard-00002-model-00001-of-00002.safetensors", metadata={"DCP_VERSION": "2.0"})
    refused(s, tmp_path / "o5", "DCP_VERSION", extra=c)
    # Another writer's file.
    s = copy_save(torch_save, tmp_path / "writers")
    am = sorted(automodel_save.glob("shard-*.safetensors"))[0]
    shutil.copy(am, s / "shard-00009-model-00001-of-00002.safetensors")
    refused(s, tmp_path / "o6", "automodel", "torch", extra=c)
    # A tensor with pieces but no place in the mapping, and a mapped tensor with no pieces.
    s = copy_save(automodel_save, tmp_path / "unmapped")
    m = json.loads((s / ".hf_metadata" / "fqn_to_file_index_mapping.json").read_text())
    del m["model.norm.weight"]
    (s / ".hf_metadata" / "fqn_to_file_index_mapping.json").write_text(json.dumps(m))
    refused(s, tmp_path / "o7", "model.norm.weight", "no place")
    s = copy_save(automodel_save, tmp_path / "nopieces")
    m = json.loads((s / ".hf_metadata" / "fqn_to_file_index_mapping.json").read_text())
    m["lm_head.bias"] = 1
    (s / ".hf_metadata" / "fqn_to_file_index_mapping.json").write_text(json.dumps(m))
    refused(s, tmp_path / "o8", "lm_head.bias", "no file of the save holds a piece")
    # Automodel's layout without its mapping file.
    s = copy_save(automodel_save, tmp_path / "nometa")
    (s / ".hf_metadata" / "fqn_to_file_index_mapping.json").unlink()
    refused(s, tmp_path / "o9", "fqn_to_file_index_mapping.json")
    # No config anywhere.
    s = copy_save(torch_save, tmp_path / "noconfig")
    refused(s, tmp_path / "o10", "config.json")
    # A foreign file in the folder.
    s = copy_save(torch_save, tmp_path / "foreign")
    shutil.copy(s / "shard-00001-model-00001-of-00002.safetensors", s / "extra.safetensors")
    refused(s, tmp_path / "o11", "extra.safetensors", extra=c)


@needs_cli
def test_a_missing_trailing_piece_is_caught_by_the_familys_shapes(mimo_save, tmp_path):
    save, _ = mimo_save
    s = copy_save(save, tmp_path / "trailing")
    # Rank 4 holds the last rows of every row-split matrix: without its files the tensors shrink
    # (offsets alone cannot tell); the family's shapes refuse that.
    for p in s.glob("shard-00004-*.safetensors"):
        p.unlink()
    msg = refused(s, tmp_path / "o", "expected")
    assert "shape" in msg or "rows" in msg or "missing" in msg, msg


@needs_cli
def test_sigkill_leaves_no_index_and_resume_completes(mimo_save, tmp_path):
    import random
    import signal
    import time
    save, _ = mimo_save
    args = ["--quant", "block", "--shard-size", "1000000", "--threads", "1", "--quiet"]
    clean = tmp_path / "clean"
    t0 = time.perf_counter()
    cli("consolidate", str(save), str(clean), *args)
    span = time.perf_counter() - t0
    want = {p.name: p.read_bytes() for p in clean.iterdir()}
    rng = random.Random(7)
    landed = 0
    for trial in range(trials(12, 4)):
        out = tmp_path / f"k{trial}"
        p = subprocess.Popen([str(CLI), "consolidate", str(save), str(out), *args])
        time.sleep(rng.uniform(0, span))
        p.send_signal(signal.SIGKILL)
        p.wait()
        got = {q.name: q.read_bytes() for q in out.iterdir() if not q.name.startswith(".")} if out.exists() else {}
        if "model.safetensors.index.json" in got:
            assert got == want
            continue
        landed += 1
        for name, data in got.items():  # anything under a final name is a clean run's
            assert want[name] == data, name
        cli("consolidate", str(save), str(out), *args, "--resume")
        assert {q.name: q.read_bytes() for q in out.iterdir() if not q.name.startswith(".")} == want
    assert landed > 0
