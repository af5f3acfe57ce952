"""Fixtures: the tiny preset (synthesized by the package itself), the committed ragged fixture, and
NeMo Automodel's own MiMoV2FlashStateDictAdapter (the reference), constructed exactly as
tools/make_goldens.py does."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

# Under pytest -n N, N test processes share N cores: torch's intra-op threads (OpenMP, which spins
# while it waits for work) would oversubscribe them, and a model's forward pass took 8x as long.
# One thread per process, and for the processes the tests start.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS)

import moeckpt

ROOT = Path(__file__).resolve().parents[2]
RAGGED = ROOT / "tests" / "data" / "ragged" / "hf"


def trials(full, fast):
    """How many times a randomized trial repeats, or which launch sizes a multi-process test runs:
    ``full`` by default and under ``scripts/test.sh --full``, ``fast`` (fewer runs of the same
    checks) when MOECKPT_TEST_TIER=fast, as ``scripts/test.sh`` sets (docs/TESTING.md)."""
    tier = os.environ.get("MOECKPT_TEST_TIER", "")
    if tier in ("", "full"):
        return full
    if tier == "fast":
        return fast
    raise ValueError(f"MOECKPT_TEST_TIER={tier}: expected fast or full")


def load_tool(name: str):
    """tools/<name>.py as a module (the oracle scripts: make_goldens, make_hf_moe_goldens)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load_make_goldens():
    return load_tool("make_goldens")


@pytest.fixture(scope="session")
def mg():
    """tools/make_goldens.py: make_adapter (the reference), load_hf_dir, EPContext, plant_specials."""
    return _load_make_goldens()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny") / "hf"
    report = moeckpt.synth(d, "tiny", seed=1)
    assert report.tensors == 257
    return d


@pytest.fixture(scope="session")
def ragged_nonan_dir(tmp_path_factory) -> Path:
    """The ragged fixture without its NaN codes (tools/make_ragged_fixture.py writes both; the
    committed one is checked to be what the script writes)."""
    import subprocess
    import sys

    d = tmp_path_factory.mktemp("ragged")
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_ragged_fixture.py"), str(d / "hf"),
                    "--nonan-dir", str(d / "hf_nonan")], check=True, capture_output=True)
    for name in os.listdir(RAGGED):
        assert (d / "hf" / name).read_bytes() == (RAGGED / name).read_bytes(), name
    return d / "hf_nonan"


class Case:
    """One HF checkpoint with its config, tensors (keys sorted, as the goldens load them) and the
    reference adapter."""

    def __init__(self, name: str, path: Path, mg):
        self.name, self.path = name, path
        with open(path / "config.json", encoding="utf-8") as f:
            self.config = json.load(f)
        self.hf = mg.load_hf_dir(str(path))
        self.ref = mg.make_adapter(self.config)
        self.n_experts = int(self.config["n_routed_experts"])

    def ours(self, **kw) -> moeckpt.MiMoV2FlashStateDictAdapter:
        return moeckpt.MiMoV2FlashStateDictAdapter(self.config, **kw)


_cases: dict[str, Case] = {}


@pytest.fixture(scope="session", params=["tiny", "ragged"])
def case(request, mg, tiny_dir) -> Case:
    if request.param not in _cases:
        path = tiny_dir if request.param == "tiny" else RAGGED
        _cases[request.param] = Case(request.param, path, mg)
    return _cases[request.param]


@pytest.fixture(scope="session")
def case_ragged_nonan(mg, ragged_nonan_dir) -> Case:
    if "ragged_nonan" not in _cases:
        _cases["ragged_nonan"] = Case("ragged_nonan", ragged_nonan_dir, mg)
    return _cases["ragged_nonan"]


@pytest.fixture(scope="session")
def case_tiny(mg, tiny_dir) -> Case:
    if "tiny" not in _cases:
        _cases["tiny"] = Case("tiny", tiny_dir, mg)
    return _cases["tiny"]


def raw(t: torch.Tensor) -> bytes:
    if hasattr(t, "to_local"):
        t = t.to_local()
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(expected: dict, actual: dict, what: str = "", order: bool = True) -> None:
    """Same keys (and order), and per key the same dtype, shape and bytes."""
    if order:
        assert list(actual) == list(expected), f"{what}: key order differs"
    else:
        assert sorted(actual) == sorted(expected), f"{what}: key sets differ"
    bad = []
    for k, e in expected.items():
        a = actual[k]
        if a.dtype != e.dtype or tuple(a.shape) != tuple(e.shape) or raw(a) != raw(e):
            bad.append(f"{k}: {a.dtype}{tuple(a.shape)} vs reference {e.dtype}{tuple(e.shape)}")
    assert not bad, f"{what}: {len(bad)} tensors differ from the reference, e.g. {bad[:3]}"


def assert_loads_like_automodel(model, hf: dict, path: Path) -> list:
    """load_hf_checkpoint (compat mode) of the checkpoint at `path` (tensors `hf`) into a fresh
    `model()` (an Automodel model class) gives every parameter Automodel's own load gives (its
    adapter's from_hf, then load_state_dict) bit for bit, and a forward pass on CPU is finite.
    Returns the checkpoint's tensors the model lacks (the report's `unexpected`)."""
    want = model()
    want.load_state_dict(want.state_dict_adapter.from_hf(dict(hf)), strict=False)
    got = model()
    report = moeckpt.load_hf_checkpoint(got, path, compat="automodel")
    assert report.missing == [] and report.tensors == len(got.state_dict())
    w, g = want.state_dict(), got.state_dict()
    assert sorted(w) == sorted(g)
    for k in w:
        assert w[k].dtype == g[k].dtype and raw(w[k]) == raw(g[k]), k
    # Eager: Automodel's MoE layers torch.compile their SwiGLU, and inductor's C++ build of it on a
    # loaded 2-core machine took most of a minute; the weights are what this checks.
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        out = got(torch.tensor([[1, 2, 3, 4]]))
    logits = out.logits if hasattr(out, "logits") else out
    assert torch.isfinite(logits.float()).all()
    return list(report.unexpected)


def fp8_round_trip_steps(hf: dict, config: dict, mg, tmp_path: Path) -> tuple[int, int, int]:
    """Random FP8 codes under random (not power-of-two) scales, each 128x128 block reaching +-448 as a
    real quantizer's blocks do, in place of every FP8 weight of `hf`; from-hf then the default to-hf.
    Returns (codes kept, codes, the largest step between an input code and its output code)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(7)
    hf = dict(hf)
    for k, v in list(hf.items()):
        if v.dtype != torch.float8_e4m3fn:
            continue
        codes = torch.randint(0, 256, v.shape, generator=g, dtype=torch.uint8)
        codes[(codes & 0x7F) >= 0x7F] &= 0xF0  # no NaN codes
        codes[::128, ::128] = 0x7E  # 448 in every block
        hf[k] = codes.view(torch.float8_e4m3fn)
        s = hf[k + "_scale_inv"]
        hf[k + "_scale_inv"] = torch.exp2(torch.rand(s.shape, generator=g) * 8 - 14) * (1 + torch.rand(s.shape, generator=g))
    src = tmp_path / "hf"
    src.mkdir()
    save_file(hf, str(src / "model.safetensors"), metadata={"format": "pt"})
    (src / "config.json").write_text(json.dumps(config))
    moeckpt.to_hf_dir(moeckpt.from_hf_dir(src), tmp_path / "back", config)
    back = mg.load_hf_dir(str(tmp_path / "back"))
    same = total = worst = 0
    for k, v in hf.items():
        if v.dtype != torch.float8_e4m3fn:
            continue
        a, b = v.view(torch.uint8).to(torch.int16), back[k].view(torch.uint8).to(torch.int16)
        same += int((a == b).sum())
        total += a.numel()
        step = torch.where((a ^ b) & 0x80 == 0, (a & 0x7F) - (b & 0x7F), (a & 0x7F) + (b & 0x7F)).abs()
        worst = max(worst, int(step.max()))
    return same, total, worst


def ep_read_bytes(hf: dict, path: Path, n: int, ranks: int) -> tuple[int, list[int], list[int]]:
    """Bytes from_hf_dir's path (allocate, then the engine fills) reads of the checkpoint at `path`
    (tensors `hf`, `n` experts a layer): at EP 1, and per rank of `ranks`, with what each rank should
    read: everything but the other ranks' experts (any '.experts.<id>.' key) and their scales."""
    from moeckpt import _core
    from moeckpt.load import _load

    total = sum(v.numel() * v.element_size() for v in hf.values())

    def expert_bytes(ids):
        return sum(v.numel() * v.element_size() for k, v in hf.items()
                   if ".experts." in k and int(k.split(".experts.")[1].split(".")[0]) in ids)

    def read(size, rank):
        dests = moeckpt.from_hf_dir(path, ep_rank=rank, ep_size=size)
        first, count = _core.expert_range(n, size, rank)
        return _load(dests, str(path), (first, count, n), torch.bfloat16, None, "sdpa", 0, 1 << 30)[3]

    got, want = [], []
    for rank in range(ranks):
        first, count = _core.expert_range(n, ranks, rank)
        got.append(read(ranks, rank))
        want.append(total - expert_bytes(set(range(n)) - set(range(first, first + count))))
    return read(1, 0), got, want + [total]
