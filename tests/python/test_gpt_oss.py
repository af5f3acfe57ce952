"""gpt-oss against NeMo Automodel 0.7.0 itself: the GPTOSSStateDictAdapter GptOssForCausalLM builds for
itself (tools/make_hf_moe_goldens.py), on the synthesized gpt-oss-tiny checkpoint (stacked MXFP4 experts with
biases, router weight and bias, attention biases and sinks, sliding and full layers) and on hand-made MXFP4
tensors with every E2M1 code and the E8M0 extremes (0, 254, 255: Automodel's torch.ldexp makes 255 2^128)."""
from __future__ import annotations

import json
import types

import pytest
import torch
from safetensors.torch import save_file

import moeckpt
from moeckpt import _core
from conftest import assert_loads_like_automodel, assert_same, load_tool

EXPERT_AXIS = ("mlp.experts.gate_and_up_projs", "mlp.experts.down_projs", "mlp.experts.gate_up_proj_bias",
               "mlp.experts.down_proj_bias")


def _hg():
    return load_tool("make_hf_moe_goldens")


@pytest.fixture(scope="module")
def oss(tmp_path_factory, mg):
    path = tmp_path_factory.mktemp("gpt-oss-tiny") / "hf"
    moeckpt.synth(path, "gpt-oss-tiny", seed=1)
    config = json.loads((path / "config.json").read_text())
    return types.SimpleNamespace(path=path, config=config, hf=mg.load_hf_dir(str(path)), hg=_hg(),
                                 ref=_hg().make_adapter(config), n=int(config["num_local_experts"]))


def _slice(sd: dict, first: int, count: int) -> dict:
    """Automodel's from_hf ignores the mesh; DCP's load gives a rank these rows of each expert-axis tensor."""
    return {k: (v[first:first + count] if k.endswith(EXPERT_AXIS) else v) for k, v in sd.items()}


def test_adapter_matches_automodel(oss, mg):
    expected = oss.ref.from_hf(dict(oss.hf))
    ours = moeckpt.GPTOSSStateDictAdapter(oss.config, compat="automodel")
    got = ours.from_hf(oss.hf)
    assert_same(expected, got, "from_hf")
    assert_same(expected, moeckpt.GPTOSSStateDictAdapter(oss.config).from_hf(oss.hf), "default", order=False)
    assert got["model.layers.0.mlp.experts.gate_and_up_projs"].shape == (8, 64, 192)
    native = dict(got)
    assert_same(oss.ref.to_hf(dict(native)), ours.to_hf(native), "to_hf")
    # Automodel's quantized export writes all-ones placeholders of 90 groups (here the input has 2 or 3):
    placeholder = oss.ref.to_hf(dict(native), quantization=True)["model.layers.0.mlp.experts.gate_up_proj_blocks"]
    assert placeholder.shape == (8, 192, 90, 16) and bool((placeholder == 1).all())
    with pytest.raises(moeckpt.UnsupportedLayoutError, match="placeholders"):
        ours.to_hf(native, quantization=True)
    # The default mode writes real MXFP4: the published tensors back, byte for byte.
    assert_same(oss.hf, moeckpt.GPTOSSStateDictAdapter(oss.config).to_hf(native, quantization=True), "mxfp4",
                order=False)
    fqn = "model.layers.1.mlp.experts.down_projs"
    assert_same(dict(oss.ref.convert_single_tensor_to_hf(fqn, native[fqn])),
                dict(ours.convert_single_tensor_to_hf(fqn, native[fqn])), fqn)
    for rank in range(3):  # 8 experts over 3 ranks (the oracle's whole result sliced to the rank: make_adapter)
        with mg.EPContext(3, rank, "fakepg") as mesh:
            ref = mg.to_plain(oss.ref.from_hf(dict(oss.hf), device_mesh=mesh))
            mine = ours.from_hf(oss.hf, device_mesh=mesh)
            assert all(hasattr(mine[k], "to_local") for k in mine if k.endswith(EXPERT_AXIS))
            mine = mg.to_plain(mine)
        first, count = _core.expert_range(oss.n, 3, rank)
        assert_same(_slice(expected, first, count), ref, f"the oracle's ep rank {rank}/3")
        assert_same(ref, mine, f"ep rank {rank}/3")
    # Under TE the sinks are self_attn.attn_module.softmax_offset (moved where Automodel's rename puts them).
    te = oss.hg.make_adapter(oss.config, attn="te")
    assert_same(te.from_hf(dict(oss.hf)),
                moeckpt.GPTOSSStateDictAdapter(oss.config, compat="automodel", attn_backend="te").from_hf(oss.hf), "te")


def _mxfp4_layer(config: dict, scales_of, seed: int) -> dict:
    """A layer's stacked MXFP4 experts with random codes (every nibble) and scales from `scales_of(shape, g)`."""
    g = torch.Generator().manual_seed(seed)
    n, h, i = config["num_local_experts"], config["hidden_size"], config["intermediate_size"]
    out = {}
    for proj, rows, cols in (("gate_up_proj", 2 * i, h), ("down_proj", h, i)):
        out[f"{proj}_blocks"] = torch.randint(0, 256, (n, rows, cols // 32, 16), generator=g, dtype=torch.uint8)
        out[f"{proj}_scales"] = scales_of((n, rows, cols // 32), g)
    return out


def test_every_code_and_scale_extreme_matches_automodel(oss):
    def extremes(shape, g):
        s = torch.randint(100, 140, shape, generator=g, dtype=torch.int32)
        flat = s.view(-1)
        flat[:8] = torch.tensor([0, 1, 126, 127, 128, 253, 254, 255])
        return s.to(torch.uint8)

    hf = dict(oss.hf)
    for k, v in _mxfp4_layer(oss.config, extremes, 3).items():
        hf[f"model.layers.0.mlp.experts.{k}"] = v
    expected = oss.ref.from_hf(dict(hf))
    got = moeckpt.GPTOSSStateDictAdapter(oss.config, compat="automodel").from_hf(hf)
    assert_same(expected, got, "extremes")
    w = got["model.layers.0.mlp.experts.gate_and_up_projs"]
    assert bool(torch.isinf(w).any()) and not bool(torch.isnan(w).any())  # 255: 2^128, exactly (0 stays 0)
    # The default mode refuses E8M0 NaN (255) and a product that overflows BF16 (254 x 6).
    with pytest.raises(moeckpt.NumericError, match="E8M0|NaN|overflows"):
        moeckpt.GPTOSSStateDictAdapter(oss.config).from_hf(hf)
    hf["model.layers.0.mlp.experts.gate_up_proj_scales"][hf["model.layers.0.mlp.experts.gate_up_proj_scales"] == 255] = 254
    hf["model.layers.0.mlp.experts.down_proj_scales"][hf["model.layers.0.mlp.experts.down_proj_scales"] == 255] = 254
    hf["model.layers.0.mlp.experts.gate_up_proj_blocks"][0, 0, 0, :] = 0x77  # 6, 6 in the 254 group
    with pytest.raises(moeckpt.NumericError, match="overflows"):
        moeckpt.GPTOSSStateDictAdapter(oss.config).from_hf(hf)


def test_round_trip_keeps_mxfp4_codes(oss, mg, tmp_path):
    """Random codes under random scales, each group of 32 reaching +-6 or +-4 as a real quantizer's groups do:
    from-hf then the default to-hf gives every code and scale back; groups that do not (other quantizers) come
    back with the same values under a smaller scale."""
    hf = dict(oss.hf)

    def scales(shape, g):
        return torch.randint(110, 130, shape, generator=g, dtype=torch.int32).to(torch.uint8)

    for layer in range(oss.config["num_hidden_layers"]):
        for k, v in _mxfp4_layer(oss.config, scales, 10 + layer).items():
            if k.endswith("_blocks"):
                v[..., 0] = (v[..., 0] & 0xF0) | 0x7  # +6 (low nibble: the group's first element)
            hf[f"model.layers.{layer}.mlp.experts.{k}"] = v
    src = tmp_path / "hf"
    src.mkdir()
    save_file(hf, str(src / "model.safetensors"), metadata={"format": "pt"})
    (src / "config.json").write_text(json.dumps(oss.config))
    native = moeckpt.from_hf_dir(src)
    moeckpt.to_hf_dir(native, tmp_path / "back", oss.config)
    back = mg.load_hf_dir(str(tmp_path / "back"))
    assert_same(hf, back, "round trip", order=False)
    assert json.loads((tmp_path / "back" / "config.json").read_text())["quantization_config"]["quant_method"] == "mxfp4"
    # A group whose largest code is 1.5: written back as 6 (and 0.5 as 2) under a scale 4 times smaller, the
    # same values.
    key = "model.layers.0.mlp.experts.down_proj"
    hf[key + "_blocks"][0, 0, 0, :] = 0x13  # 1.5, 0.5
    ours = moeckpt.GPTOSSStateDictAdapter(oss.config)
    out = ours.to_hf(ours.from_hf(hf), quantization=True)
    assert out[key + "_blocks"][0, 0, 0, 0] == 0x47 and out[key + "_scales"][0, 0, 0] == hf[key + "_scales"][0, 0, 0] - 2
    again = ours.from_hf(out)
    assert_same(ours.from_hf(hf), again, "same values", order=False)


def test_folders_match_automodel(oss, mg, tmp_path):
    expected = oss.ref.from_hf(dict(oss.hf))
    assert_same(expected, moeckpt.from_hf_dir(oss.path, compat="automodel"), "from_hf_dir", order=False)
    for rank in range(3):
        local = moeckpt.from_hf_dir(oss.path, ep_rank=rank, ep_size=3)
        first, count = _core.expert_range(oss.n, 3, rank)
        assert_same(_slice(expected, first, count), local, f"from_hf_dir ep {rank}/3", order=False)
    moeckpt.to_hf_dir(expected, tmp_path / "back", oss.config)
    assert_same(oss.hf, mg.load_hf_dir(str(tmp_path / "back")), "to_hf_dir of from_hf_dir", order=False)


def test_bf16_layout_is_read_and_quantized(oss, mg, tmp_path):
    """The HF BF16 layout (Automodel's to_hf, moeckpt's dequantize: gate_up_proj [E, hidden, 2I]) reads
    back as Automodel reads it, in every EP rank's rows, and quantize gives the published MXFP4 back."""
    native = oss.ref.from_hf(dict(oss.hf))
    bf16_sd = oss.ref.to_hf(dict(native))
    assert bf16_sd["model.layers.0.mlp.experts.gate_up_proj"].shape == (8, 64, 192)
    assert_same(oss.ref.from_hf(dict(bf16_sd)),
                moeckpt.GPTOSSStateDictAdapter(oss.config, compat="automodel").from_hf(bf16_sd), "bf16 from_hf")
    moeckpt.dequantize_dir(oss.path, tmp_path / "bf16")
    assert_same(bf16_sd, mg.load_hf_dir(str(tmp_path / "bf16")), "dequantize", order=False)
    for rank in range(3):
        first, count = _core.expert_range(oss.n, 3, rank)
        assert_same(_slice(native, first, count), moeckpt.from_hf_dir(tmp_path / "bf16", ep_rank=rank, ep_size=3),
                    f"bf16 ep {rank}/3", order=False)
    moeckpt.quantize_dir(tmp_path / "bf16", tmp_path / "mxfp4")
    assert_same(oss.hf, mg.load_hf_dir(str(tmp_path / "mxfp4")), "quantize", order=False)
    cfg = json.loads((tmp_path / "mxfp4" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "mxfp4"
    with pytest.raises(moeckpt.UnsupportedLayoutError, match="already MXFP4"):
        moeckpt.quantize_dir(oss.path, tmp_path / "again")


def test_loads_automodels_model_as_automodel_does(oss):
    def model():
        return oss.hg.build_model(oss.config, device="cpu")

    assert assert_loads_like_automodel(model, oss.hf, oss.path) == []


def test_an_ep_rank_reads_only_its_experts(oss):
    """An EP rank reads its experts' rows of every stacked tensor (blocks, scales, biases) and nothing of the
    others'."""
    from moeckpt.load import _load

    total = sum(v.numel() * v.element_size() for v in oss.hf.values())
    for rank in range(3):
        first, count = _core.expert_range(oss.n, 3, rank)
        dests = moeckpt.from_hf_dir(oss.path, ep_rank=rank, ep_size=3)
        got = _load(dests, str(oss.path), (first, count, oss.n), torch.bfloat16, None, "sdpa", 0, 1 << 30)[3]
        others = sum(v.numel() * v.element_size() * (oss.n - count) // oss.n
                     for k, v in oss.hf.items() if ".mlp.experts." in k)
        assert got == total - others, (rank, got, total - others)


def test_refusals(oss, tmp_path):
    with pytest.raises(moeckpt.InvalidArgumentError, match="automodel-0.6"):
        moeckpt.from_hf_dir(oss.path, compat="automodel-0.6")
    cfg = dict(oss.config, attention_bias=False)
    with pytest.raises(moeckpt.ConfigMismatchError, match="attention_bias is false"):
        moeckpt.GPTOSSStateDictAdapter(cfg).from_hf(oss.hf)
    hf = dict(oss.hf)
    key = "model.layers.1.mlp.experts.down_proj_blocks"
    hf[key] = hf[key][:7]  # a stacked tensor of 7 experts where the config says 8
    with pytest.raises(moeckpt.ConfigMismatchError, match=r"down_proj_blocks.*n_routed_experts = 8"):
        moeckpt.GPTOSSStateDictAdapter(oss.config).from_hf(hf)
    hf = dict(oss.hf)
    hf[key] = hf[key].view(torch.int8)
    with pytest.raises(moeckpt.ConfigMismatchError, match="I8"):
        moeckpt.GPTOSSStateDictAdapter(oss.config).from_hf(hf)
    hf = dict(oss.hf)
    del hf["model.layers.1.mlp.experts.down_proj_scales"]
    with pytest.raises(moeckpt.MalformedFileError, match="down_proj_scales"):
        moeckpt.GPTOSSStateDictAdapter(oss.config).from_hf(hf)
    hf = dict(oss.hf)
    hf["model.layers.0.mlp.experts.gate_up_proj_bias"] = hf["model.layers.0.mlp.experts.gate_up_proj_bias"][:, :96]
    with pytest.raises(moeckpt.ConfigMismatchError, match="gate_up_proj_bias"):
        moeckpt.GPTOSSStateDictAdapter(oss.config).from_hf(hf)
    bad = dict(oss.config, quantization_config={"quant_method": "fp8", "weight_block_size": [128, 128]})
    with pytest.raises(moeckpt.MalformedFileError, match="mxfp4"):
        moeckpt.GPTOSSStateDictAdapter(bad)
    with pytest.raises(moeckpt.MalformedFileError, match="multiples of 32"):
        moeckpt.GPTOSSStateDictAdapter(dict(oss.config, hidden_size=80))
    assert type(moeckpt.adapter_for(oss.config)) is moeckpt.GPTOSSStateDictAdapter
    with pytest.raises(moeckpt.UnsupportedLayoutError, match="GPTOSSStateDictAdapter"):
        moeckpt.MiMoV2FlashStateDictAdapter(oss.config)
