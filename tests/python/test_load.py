"""moeckpt.load_hf_checkpoint: an HF checkpoint straight into NeMo Automodel 0.7.0's real
MiMoV2FlashForCausalLM (CPU), against Automodel's own path (from_hf of the loaded files, then
load_state_dict); dict destinations; DTensor shards in a real 2-process job."""
from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp

import load_worker
import moeckpt
from conftest import raw, trials


def _automodel_model(config_json: dict):
    from nemo_automodel.components.models.common import BackendConfig
    from nemo_automodel.components.models.mimo_v2_flash.config import MiMoV2FlashConfig
    from nemo_automodel.components.models.mimo_v2_flash.model import MiMoV2FlashForCausalLM

    cfg = dict(config_json)
    cfg.pop("quantization_config", None)
    backend = BackendConfig(attn="sdpa", linear="torch", rms_norm="torch", experts="torch",
                            dispatcher="torch", enable_hf_state_dict_adapter=True)
    torch.manual_seed(0)
    return MiMoV2FlashForCausalLM.from_config(MiMoV2FlashConfig(**cfg), backend=backend)


def _automodel_load(path, config, mg):
    """Automodel's own path: the loaded files through its adapter, then load_state_dict."""
    model = _automodel_model(config)
    native = model.state_dict_adapter.from_hf(mg.load_hf_dir(str(path)))
    model.load_state_dict(native, strict=False)
    return model


@pytest.mark.parametrize("fixture", ["tiny_dir", "ragged_nonan_dir"])
@pytest.mark.parametrize("compat", ["automodel", None])
def test_loads_the_real_model_as_automodel_does(request, mg, fixture, compat):
    path = request.getfixturevalue(fixture)
    with open(path / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    want = {k: v for k, v in _automodel_load(path, config, mg).state_dict().items()}
    model = _automodel_model(config)
    report = moeckpt.load_hf_checkpoint(model, path, compat=compat)
    assert report.missing == []
    assert report.tensors == len(model.state_dict())
    assert all(".mtp." in k for k in report.unexpected), report.unexpected  # the model has no MTP
    got = model.state_dict()
    differ = sorted(k for k in want if raw(want[k]) != raw(got[k]))
    if compat:
        assert differ == []
    else:  # only where the fused K/V scale layout is read correctly (Automodel uses the plain grid;
        # the ragged fixture's attention is too small for the layouts to differ)
        assert all(k.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight")) for k in differ), differ
        assert bool(differ) == (fixture == "tiny_dir")
    # Eager: Automodel's MoE layers torch.compile their SwiGLU, and inductor's C++ build of it on a
    # loaded 2-core machine took most of a minute; the weights are what this checks.
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        out = model(torch.tensor([[1, 2, 3, 4]]))
    logits = out.logits if hasattr(out, "logits") else out
    assert torch.isfinite(logits.float()).all()


def test_dict_destinations_strict_and_dtypes(tiny_dir):
    full = moeckpt.from_hf_dir(tiny_dir)
    dests = {k: torch.empty_like(v) for k, v in full.items()}
    dests["model.layers.0.self_attn.q_proj.weight"] = torch.empty(full["model.layers.0.self_attn.q_proj.weight"].shape,
                                                                  dtype=torch.float32)
    dests["model.layers.0.extra.weight"] = torch.zeros(4)
    with pytest.raises(moeckpt.ConfigMismatchError, match="model.layers.0.extra.weight"):
        moeckpt.load_hf_checkpoint(dests, tiny_dir)
    report = moeckpt.load_hf_checkpoint(dests, tiny_dir, strict=False)
    assert report.missing == ["model.layers.0.extra.weight"]
    assert report.unexpected == []
    for k, v in full.items():
        if k == "model.layers.0.self_attn.q_proj.weight":
            assert torch.equal(dests[k], v.float())  # BF16 -> F32 exactly
        else:
            assert raw(dests[k]) == raw(v), k
    # A transposed (non-contiguous) destination is filled through a staging tensor.
    w = full["model.embed_tokens.weight"]
    t = torch.empty(w.shape[1], w.shape[0], dtype=w.dtype).t()
    moeckpt.load_hf_checkpoint({"model.embed_tokens.weight": t}, tiny_dir, strict=True)
    assert torch.equal(t, w)
    with pytest.raises(moeckpt.ConfigMismatchError):
        moeckpt.load_hf_checkpoint({"model.embed_tokens.weight": torch.empty(3, 3, dtype=w.dtype)}, tiny_dir)


@pytest.mark.parametrize("nproc", trials([2, 3, 4], [3]))
def test_dtensor_shards_under_torchrun(tiny_dir, nproc):
    # The same checks in a job launched by torchrun (gloo, CPU), with even and uneven splits.
    import os
    import subprocess
    import sys

    worker = os.path.join(os.path.dirname(__file__), "load_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                        "--master-port", str(29600 + nproc), worker, str(tiny_dir)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]


def test_staged_pieces_equal_direct_writes(tiny_dir):
    # The staging path CUDA destinations take (pieces as dequantized), exercised with CPU
    # destinations: same bytes as writing in place, dtype conversion and row windows included.
    want = moeckpt.from_hf_dir(tiny_dir)
    dests = {k: torch.full_like(v, 7) for k, v in want.items()}
    dests["model.layers.0.mlp.gate_proj.weight"] = torch.zeros(want["model.layers.0.mlp.gate_proj.weight"].shape)
    moeckpt.load_hf_checkpoint(dests, tiny_dir, _stage_all=True)
    for k, v in want.items():
        assert torch.equal(dests[k].to(v.dtype), v) if k.endswith("gate_proj.weight") else raw(dests[k]) == raw(v), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_destinations(tiny_dir):
    want = moeckpt.from_hf_dir(tiny_dir)
    dests = {k: torch.empty_like(v, device="cuda") for k, v in want.items()}
    moeckpt.load_hf_checkpoint(dests, tiny_dir)
    for k, v in want.items():
        assert raw(dests[k].cpu()) == raw(v), k


def test_float32_models_are_dequantized_in_float32(tiny_dir):
    want = moeckpt.from_hf_dir(tiny_dir, dtype=torch.float32)
    dests = {k: torch.empty(v.shape, dtype=torch.float32) for k, v in want.items()}
    moeckpt.load_hf_checkpoint(dests, tiny_dir)
    for k, v in want.items():
        assert torch.equal(dests[k], v.float()), k


def test_dtensor_shards_in_a_two_process_job(tiny_dir, tmp_path):
    # Each rank loads DTensor destinations (experts Shard(0) on "ep", other weights Shard(0) or
    # Replicate(), plain EP-local expert tensors) and checks its local data against the matching
    # slice of the single-process result, and that it read less than the whole checkpoint.
    mp.spawn(load_worker.run, args=(2, str(tiny_dir), str(tmp_path / "store")), nprocs=2, join=True)
