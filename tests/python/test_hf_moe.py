"""Qwen3-MoE, GLM-4.5 and MiniMax-M2 against NeMo Automodel 0.7.0 itself: the adapters
Qwen3MoeForCausalLM, Glm4MoeForCausalLM and MiniMaxM2ForCausalLM build for themselves
(tools/make_hf_moe_goldens.py), on synthesized checkpoints with attention biases, q/k norms, dense and MoE
layers, GLM's shared expert, router bias and MTP layer, MiniMax's renamed MoE block and FP8; Qwen3's and
GLM's FP8 presets for what Automodel cannot do (its adapters drop the scales) and moeckpt does."""
from __future__ import annotations

import json
import types

import pytest
import torch

import moeckpt
from conftest import assert_loads_like_automodel, assert_same, ep_read_bytes, fp8_round_trip_steps, load_tool

ADAPTERS = {"qwen3-moe-tiny": moeckpt.Qwen3MoeStateDictAdapter, "glm4-moe-tiny": moeckpt.Glm4MoeStateDictAdapter,
            "minimax-m2-tiny": moeckpt.MiniMaxM2StateDictAdapter}


def _hg():
    return load_tool("make_hf_moe_goldens")


@pytest.fixture(scope="module", params=sorted(ADAPTERS))
def fam(request, tmp_path_factory, mg):
    path = tmp_path_factory.mktemp(request.param) / "hf"
    moeckpt.synth(path, request.param, seed=1)
    with open(path / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    minimax = request.param.startswith("minimax")  # an FP8 release, dequantized by Automodel too
    fp8 = path
    if not minimax:
        fp8 = tmp_path_factory.mktemp(request.param + "-fp8") / "hf"
        moeckpt.synth(fp8, request.param + "-fp8", seed=1)
    n = int(config.get("num_experts") or config.get("n_routed_experts") or config["num_local_experts"])
    return types.SimpleNamespace(name=request.param, path=path, fp8=fp8, config=config, cls=ADAPTERS[request.param],
                                 hf=mg.load_hf_dir(str(path)), ref=_hg().make_adapter(config), n=n, minimax=minimax)


def test_adapter_matches_automodel(fam, mg):
    expected = fam.ref.from_hf(dict(fam.hf))
    ours = fam.cls(fam.config, compat="automodel")
    got = ours.from_hf(fam.hf)
    assert_same(expected, got, f"{fam.name} from_hf")
    assert_same(expected, fam.cls(fam.config).from_hf(fam.hf), "default", order=False)
    native = dict(got)
    assert_same(fam.ref.to_hf(dict(native)), ours.to_hf(native), f"{fam.name} to_hf")
    # Qwen3's and GLM's adapters ignore quantization=True, MiniMax's casts: so does the compat mode.
    assert_same(fam.ref.to_hf(dict(native), quantization=True), ours.to_hf(native, quantization=True),
                f"{fam.name} to_hf quantization=True")
    # The default mode writes what the release is (BF16, or MiniMax's block FP8, the synthesized
    # values being exact in FP8): the input back.
    assert_same(fam.hf, fam.cls(fam.config).to_hf(native, quantization=True), "default to_hf", order=False)
    first_moe = 1 if fam.name.startswith("glm") else 0
    fqn = f"model.layers.{first_moe}.mlp.experts.down_projs"
    assert_same(dict(fam.ref.convert_single_tensor_to_hf(fqn, native[fqn])),
                dict(ours.convert_single_tensor_to_hf(fqn, native[fqn])), fqn)
    for rank in range(3):  # 8 experts over 3 ranks, DTensors on the mesh's "ep" dimension
        with mg.EPContext(3, rank, "fakepg") as mesh:
            ref = mg.to_plain(fam.ref.from_hf(dict(fam.hf), device_mesh=mesh))
            mine = mg.to_plain(ours.from_hf(fam.hf, device_mesh=mesh))
        assert_same(ref, mine, f"{fam.name} ep rank {rank}/3")


def test_adapter_for_picks_the_family(fam, tiny_dir):
    assert type(moeckpt.adapter_for(fam.config)) is fam.cls
    with pytest.raises(moeckpt.UnsupportedLayoutError, match=fam.cls.__name__):
        moeckpt.MiMoV2FlashStateDictAdapter(fam.config)
    with pytest.raises(moeckpt.UnsupportedLayoutError, match="MiMoV2FlashStateDictAdapter"):
        fam.cls(tiny_dir / "config.json")


def test_folders_match_automodel(fam, mg, tmp_path):
    expected = fam.ref.from_hf(dict(fam.hf))
    assert_same(expected, moeckpt.from_hf_dir(fam.path, compat="automodel"), "from_hf_dir", order=False)
    for rank in range(3):
        local = moeckpt.from_hf_dir(fam.path, ep_rank=rank, ep_size=3)
        ref = fam.cls(fam.config, ep_rank=rank, ep_size=3).from_hf(fam.hf)
        assert_same(ref, local, f"from_hf_dir ep {rank}/3", order=False)
    moeckpt.to_hf_dir(expected, tmp_path / "back", fam.config)
    assert_same(fam.hf, mg.load_hf_dir(str(tmp_path / "back")), "to_hf_dir of from_hf_dir", order=False)
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    assert ("quantization_config" in written) == fam.minimax


def test_fp8_release_compat_refuses_default_dequantizes(fam, mg, tmp_path):
    hf8 = mg.load_hf_dir(str(fam.fp8))
    with open(fam.fp8 / "config.json", encoding="utf-8") as f:
        cfg8 = json.load(f)
    if fam.minimax:  # Automodel's MiniMax adapter dequantizes: so does compat, as the default
        assert_same(fam.cls(cfg8).from_hf(hf8), fam.cls(cfg8, compat="automodel").from_hf(hf8), "compat")
    else:
        with pytest.raises(moeckpt.UnsupportedLayoutError, match="drops every weight_scale_inv"):
            moeckpt.from_hf_dir(fam.fp8, compat="automodel")
        with pytest.raises(moeckpt.UnsupportedLayoutError, match="drops every weight_scale_inv"):
            fam.cls(cfg8, compat="automodel").from_hf(hf8)
    # The default mode dequantizes with the scales: each value is code x its block's scale.
    native = fam.cls(cfg8).from_hf(hf8)
    w = "model.layers.1.self_attn.q_proj.weight"
    codes, scale = hf8[w].float(), hf8[w + "_scale_inv"]
    rows, cols = codes.shape
    full = scale.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
    assert torch.equal(native[w], (codes * full).to(torch.bfloat16))
    # ... and the FP8 release is written back code for code, scales and quantization_config included.
    moeckpt.to_hf_dir(native, tmp_path / "back", cfg8)
    back = mg.load_hf_dir(str(tmp_path / "back"))
    assert_same(hf8, back, "fp8 round trip", order=False)
    assert "quantization_config" in json.loads((tmp_path / "back" / "config.json").read_text())


def test_round_trip_keeps_fp8_codes(fam, mg, tmp_path):
    with open(fam.fp8 / "config.json", encoding="utf-8") as f:
        cfg8 = json.load(f)
    same, total, worst = fp8_round_trip_steps(mg.load_hf_dir(str(fam.fp8)), cfg8, mg, tmp_path)
    assert total > 0 and same / total >= 0.999 and worst <= 1, (same, total, worst)

def test_loads_automodels_model_as_automodel_does(fam):
    hg = _hg()

    def model():
        return hg.build_model(fam.config, device="cpu")

    unexpected = assert_loads_like_automodel(model, fam.hf, fam.path)
    if fam.name.startswith("glm"):  # the model has no MTP layer
        assert unexpected and all(".layers.3." in k for k in unexpected)
    else:
        assert unexpected == []


def test_an_ep_rank_reads_only_its_experts(fam):
    whole, got, want = ep_read_bytes(fam.hf, fam.path, fam.n, 3)
    assert whole == want[-1]
    assert got == want[:-1]

def test_compat_06_is_refused_and_config_contradictions(fam):
    with pytest.raises(moeckpt.InvalidArgumentError, match="automodel-0.6"):
        moeckpt.from_hf_dir(fam.path, compat="automodel-0.6")
    cfg = dict(fam.config)
    if fam.minimax:
        cfg["use_qk_norm"] = False
    else:
        cfg["attention_bias"] = not cfg["attention_bias"]
    with pytest.raises(moeckpt.ConfigMismatchError, match="attention_bias is false|has no bias|no q/k norm"):
        fam.cls(cfg).from_hf(fam.hf)
