"""Refusals surface as moeckpt.Error (a RuntimeError) with the engine's full one-line message."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest
import torch

import moeckpt
from moeckpt import _core

import preloaded_child


def test_error_is_a_runtime_error():
    assert issubclass(moeckpt.Error, RuntimeError)


def test_nan_codes_are_refused_by_default_and_named(mg):
    from conftest import RAGGED, Case

    case = Case("ragged", RAGGED, mg)  # plants the NaN codes 0x7F, 0xFF in layer 2's q_proj
    with pytest.raises(moeckpt.Error) as e:
        case.ours().from_hf(case.hf)
    assert "model.layers.2.self_attn.q_proj.weight" in str(e.value) and "NaN" in str(e.value)
    with pytest.raises(moeckpt.Error, match=r"model-0000\d-of-00002.safetensors: tensor 'model.layers.2.self_attn.q_proj.weight'.*NaN"):
        moeckpt.from_hf_dir(case.path)


def test_fp8_weight_without_scale(case_tiny):
    hf = {k: v for k, v in case_tiny.hf.items() if k != "model.layers.0.mlp.gate_proj.weight_scale_inv"}
    with pytest.raises(moeckpt.Error, match=r"<memory>: tensor 'model.layers.0.mlp.gate_proj.weight': FP8 weight without a '_scale_inv' companion \(expected every FP8 weight"):
        case_tiny.ours().from_hf(hf)
    # compat passes it through as the reference does.
    out = case_tiny.ours(compat="automodel").from_hf(hf)
    assert out["model.layers.0.mlp.gate_proj.weight"].dtype == torch.float8_e4m3fn


def test_missing_expert_is_named(case_tiny):
    hf = {k: v for k, v in case_tiny.hf.items() if not k.startswith("model.layers.2.mlp.experts.5.down_proj.")}
    with pytest.raises(moeckpt.Error, match=r"model\.layers\.2\.mlp\.experts\.5\.down_proj\.weight"):
        case_tiny.ours().from_hf(hf)
    # Rank 0 of 2 owns experts 0..3 only: expert 5 is not needed there.
    case_tiny.ours(ep_rank=0, ep_size=2).from_hf(hf)


def test_bad_inputs(case_tiny, tmp_path):
    with pytest.raises(moeckpt.Error, match='config has no "hidden_size"'):
        moeckpt.MiMoV2FlashStateDictAdapter({})
    with pytest.raises(ValueError, match="compat"):
        case_tiny.ours(compat="megatron")
    with pytest.raises(ValueError, match="ep_rank 2"):
        case_tiny.ours(ep_rank=2, ep_size=2)
    with pytest.raises(ValueError, match="bfloat16 or torch.float32"):
        case_tiny.ours(dtype=torch.float16)
    with pytest.raises(moeckpt.Error, match="no such file|cannot open|does not exist|not found|No such"):
        moeckpt.from_hf_dir(tmp_path / "nothing")
    native = case_tiny.ours().from_hf(case_tiny.hf)
    with pytest.raises(moeckpt.Error, match="regular expression"):
        case_tiny.ours().to_hf(native, exclude_key_regex="(")
    with pytest.raises(TypeError, match="torch.Tensor"):
        case_tiny.ours().from_hf({"a.weight": [1, 2]})
    # A grouped tensor with too few experts and no rank to place them: refused, as the reference does.
    key = "model.layers.1.mlp.experts.gate_and_up_projs"
    with pytest.raises(ValueError, match="Expected first dimension to be 8, got 4"):
        case_tiny.ours(compat="automodel").to_hf({key: native[key][:4]})
    with pytest.raises(ValueError, match="holds 4 experts"):
        case_tiny.ours().to_hf({key: native[key][:4]})


def test_inputs_are_read_in_place_and_may_be_views(case_tiny):
    # Non-contiguous inputs are made contiguous; results equal those of the contiguous tensors.
    key = "model.layers.0.self_attn.o_proj.weight"
    t = case_tiny.hf[key]
    hf = dict(case_tiny.hf)
    hf[key] = t.t().contiguous().t()  # same values, column-major
    assert not hf[key].is_contiguous()
    out = case_tiny.ours().from_hf(hf)
    assert torch.equal(out[key].view(torch.int16), t.view(torch.int16))
    # Outputs own their memory (no copy on the way out): writable, independent tensors.
    a = out["model.layers.1.mlp.experts.down_projs"]
    assert a.is_contiguous() and a.untyped_storage().nbytes() == a.numel() * a.element_size()


def test_the_gil_is_released_during_conversion(case_tiny):
    # While one thread runs the engine, another keeps running Python code at a good share of its idle pace.
    # With the GIL held through each call, it would run only in the gaps between calls.
    from moeckpt import _tensors as T

    native = case_tiny.ours(dtype=torch.float32).from_hf(case_tiny.hf)
    keep: list = []
    rows = T.rows(native.items(), keep)
    cfg = _core.Config(json.dumps(case_tiny.config), "config")

    def spin(seconds: float, stop: threading.Event) -> int:
        ticks, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds and not stop.is_set():
            ticks += 1
        return ticks

    # Best of three rounds each: other processes (pytest -n, torchrun jobs beside it) take the CPU
    # at times; they slow a round, not the best one.
    idle = max(spin(0.3, threading.Event()) for _ in range(3))
    t0 = time.perf_counter()
    _core.to_hf(rows, cfg, "block", "none", None, None, 0, True, 1, 1 << 30)
    call = time.perf_counter() - t0
    assert call > 0.02  # long enough for the comparison to mean something

    stop = threading.Event()

    def work():
        while not stop.is_set():
            _core.to_hf(rows, cfg, "block", "none", None, None, 0, True, 1, 1 << 30)

    th = threading.Thread(target=work)
    th.start()
    busy = max(spin(0.3, threading.Event()) for _ in range(3))
    stop.set()
    th.join()
    assert busy > 0.25 * idle, (busy, idle, call)  # measured: ~0.5-0.9 released, ~0.08 held


def test_meta_tensors_are_a_clear_error_everywhere(case_tiny, tmp_path):
    ad = case_tiny.ours()
    native = ad.from_hf(case_tiny.hf)
    for key in ("model.layers.1.mlp.experts.gate_and_up_projs", "model.norm.weight"):
        bad = dict(native)
        bad[key] = torch.empty(native[key].shape, dtype=native[key].dtype, device="meta")
        with pytest.raises(moeckpt.Error, match=f"tensor '{key}': is a meta tensor"):
            ad.to_hf(bad, quantization=True)
        with pytest.raises(moeckpt.Error, match="is a meta tensor"):
            moeckpt.to_hf_dir(bad, tmp_path / "out", case_tiny.config)
        assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
        with pytest.raises(moeckpt.Error, match="is a meta tensor"):
            ad.convert_single_tensor_to_hf(key, bad[key])
    hf = dict(case_tiny.hf)
    hf["model.norm.weight"] = torch.empty(hf["model.norm.weight"].shape, device="meta")
    with pytest.raises(moeckpt.Error, match="is a meta tensor"):
        ad.from_hf(hf)


def test_a_dtensor_beside_a_plain_grouped_tensor_is_refused(case_tiny, mg):
    ad = case_tiny.ours()
    for rank in range(2):
        with mg.EPContext(2, rank, "fakepg") as mesh:
            sharded = ad.from_hf(case_tiny.hf, device_mesh=mesh)
            mixed = dict(sharded)
            key = "model.layers.1.mlp.experts.down_projs"
            mixed[key] = sharded[key].to_local()  # plain, beside DTensor gate_and_up_projs
            with pytest.raises(moeckpt.Error, match=f"tensor '{key}': is a plain tensor while"):
                ad.to_hf(mixed, quantization=True)


def test_each_refusal_is_raised_as_the_class_of_its_kind(case_tiny, tmp_path):
    kinds = {
        moeckpt.MalformedFileError: "malformed_file",
        moeckpt.ConfigMismatchError: "config_mismatch",
        moeckpt.UnsupportedLayoutError: "unsupported_layout",
        moeckpt.NumericError: "numeric",
        moeckpt.DestinationError: "destination",
        moeckpt.ConversionInterrupted: "interrupted",
        moeckpt.InvalidArgumentError: "invalid_argument",
        moeckpt.InputIOError: "io",
    }
    for cls, kind in kinds.items():
        assert issubclass(cls, moeckpt.Error) and cls.kind == kind
    assert issubclass(moeckpt.InvalidArgumentError, ValueError)
    assert issubclass(moeckpt.InputIOError, OSError) and issubclass(moeckpt.DestinationError, OSError)

    # Bytes that are not a safetensors file; a config without a required field.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(case_tiny.config))
    (bad / "model.safetensors").write_bytes(b"\x04\0\0\0\0\0\0\0{]  ")
    with pytest.raises(moeckpt.MalformedFileError):
        moeckpt.from_hf_dir(bad)
    with pytest.raises(moeckpt.MalformedFileError, match='config has no "hidden_size"'):
        moeckpt.MiMoV2FlashStateDictAdapter({})
    # A tensor whose shape disagrees with the config; a missing expert.
    hf = dict(case_tiny.hf)
    hf["model.norm.weight"] = hf["model.norm.weight"][:-1].clone()
    with pytest.raises(moeckpt.ConfigMismatchError):
        case_tiny.ours().from_hf(hf)
    hf = {k: v for k, v in case_tiny.hf.items() if not k.startswith("model.layers.2.mlp.experts.5.down_proj.")}
    with pytest.raises(moeckpt.ConfigMismatchError):
        case_tiny.ours().from_hf(hf)
    # A NaN scale.
    hf = dict(case_tiny.hf)
    s = hf["model.layers.0.mlp.gate_proj.weight_scale_inv"].clone()
    s[0, 0] = float("nan")
    hf["model.layers.0.mlp.gate_proj.weight_scale_inv"] = s
    with pytest.raises(moeckpt.NumericError):
        case_tiny.ours().from_hf(hf)
    # The native layout where HF is expected.
    native = case_tiny.ours().from_hf(case_tiny.hf)
    with pytest.raises(moeckpt.UnsupportedLayoutError):
        case_tiny.ours().from_hf(native)
    # Arguments: a regular expression, EP rank, meta tensors.
    with pytest.raises(moeckpt.InvalidArgumentError):
        case_tiny.ours().to_hf(native, exclude_key_regex="(")
    with pytest.raises(moeckpt.InvalidArgumentError):
        case_tiny.ours(ep_rank=2, ep_size=2)
    with pytest.raises(moeckpt.InvalidArgumentError, match="meta tensor"):
        case_tiny.ours().from_hf({k: v.to("meta") for k, v in case_tiny.hf.items()})
    # An input that cannot be read; a destination that holds a checkpoint.
    with pytest.raises(moeckpt.InputIOError):
        moeckpt.from_hf_dir(tmp_path / "nothing")
    dst = tmp_path / "out"
    moeckpt.to_hf_dir(native, dst, config=case_tiny.config)
    with pytest.raises(moeckpt.DestinationError, match="already holds a checkpoint"):
        moeckpt.to_hf_dir(native, dst, config=case_tiny.config)


_ISA_PROBE = """
import sys, moeckpt
try:
    print("accepted", moeckpt.kernel_isa())
except moeckpt.InvalidArgumentError as e:
    print("refused", type(e).__name__, e)
try:
    moeckpt.from_hf_dir(sys.argv[1])
    print("accepted")
except moeckpt.InvalidArgumentError as e:
    print("refused", type(e).__name__, e)
"""


def test_unknown_moeckpt_isa_is_a_typed_error(tiny_dir):
    # The kernels read MOECKPT_ISA once per process, at their first call: each setting gets a
    # process of its own.
    def probe(isa):
        r = preloaded_child.run(_ISA_PROBE, tiny_dir, env={"MOECKPT_ISA": isa})
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout.splitlines()

    lines = probe("foo")
    assert len(lines) == 2, lines
    for line in lines:  # kernel_isa() and a conversion, the same one-line refusal
        assert line.startswith("refused InvalidArgumentError "), line
        assert 'MOECKPT_ISA="foo" names no kernel ISA' in line, line
        assert "expected scalar, avx2 or avx512" in line, line
    assert probe("scalar") == ["accepted scalar", "accepted"]
