"""The MiMo family beyond V2-Flash against NeMo Automodel 0.7.0 itself: the TE attention backend's
sink naming, and the MiMo-V2.6 layout (fused QKV over metadata.tp_size, MXFP4 experts) through the
folder reader and the in-memory adapter."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import moeckpt
from conftest import ROOT, assert_same

V26 = ROOT / "tests" / "data" / "v26"


def _v26_goldens():
    spec = importlib.util.spec_from_file_location("make_v26_goldens", ROOT / "tools" / "make_v26_goldens.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_te_backend_names_the_sink_as_automodel_does(case_tiny, mg):
    ref = mg.make_adapter(case_tiny.config, "te")
    expected = ref.from_hf(dict(case_tiny.hf))
    ours = case_tiny.ours(compat="automodel", attn_backend="te")
    got = ours.from_hf(case_tiny.hf)
    assert any(k.endswith("self_attn.attn_module.softmax_offset") for k in got)
    assert_same(expected, got, "from_hf te", order=False)
    native = {k: v for k, v in got.items()}
    assert_same(ref.to_hf(dict(native)), ours.to_hf(native), "to_hf te", order=False)
    assert_same(ref.to_hf(dict(native), quantization=True), ours.to_hf(native, quantization=True),
                "to_hf te quantized", order=False)
    # The default mode writes the sink back as published (BF16 attention_sink_bias): the HF input.
    back = case_tiny.ours(attn_backend="te").to_hf(native)
    for k, v in back.items():
        if k.endswith("attention_sink_bias"):
            assert v.dtype == torch.bfloat16 and torch.equal(v, case_tiny.hf[k])
    with pytest.raises(moeckpt.InvalidArgumentError):
        case_tiny.ours(attn_backend="flash")


@pytest.mark.parametrize("tp", [2, 4])
def test_v26_from_hf_matches_automodel(tp, mg, tmp_path):
    hf_dir = V26 / f"tp{tp}" / "hf"
    ref = _v26_goldens().make_adapter(str(hf_dir))
    hf = mg.load_hf_dir(str(hf_dir))
    expected = ref.from_hf(dict(hf))
    # The folder reader (tp_size from the index) and the in-memory adapter (tp_size from the index
    # beside the config path, or given).
    assert_same(expected, moeckpt.from_hf_dir(hf_dir, compat="automodel"), "from_hf_dir", order=False)
    assert_same(expected, moeckpt.from_hf_dir(hf_dir), "from_hf_dir default", order=False)
    ours = moeckpt.MiMoV2FlashStateDictAdapter(hf_dir, compat="automodel")
    assert ours.checkpoint_tp_size == tp
    assert_same(expected, ours.from_hf(hf), "from_hf", order=False)
    given = moeckpt.MiMoV2FlashStateDictAdapter(dict(ref.config.to_dict()), checkpoint_tp_size=tp)
    assert_same(expected, given.from_hf(hf), "from_hf tp given", order=False)
    # A wrong degree is refused, naming the scale.
    wrong = moeckpt.MiMoV2FlashStateDictAdapter(str(hf_dir / "config.json"), checkpoint_tp_size=6 - tp)
    with pytest.raises(moeckpt.ConfigMismatchError, match="qkv_proj"):
        wrong.from_hf(hf)
    # to_hf: BF16 split projections (quantization=False), as 0.7.0; a quantized export refused.
    native = moeckpt.from_hf_dir(hf_dir)
    assert_same(ref.to_hf(dict(native)), ours.to_hf(native), "to_hf", order=False)
    with pytest.raises(moeckpt.UnsupportedLayoutError, match="only supported for checkpoint loading"):
        ours.to_hf(native, quantization=True)


def test_v25_pro_matches_automodels_mimo_v25_adapter(mg):
    hf_dir = ROOT / "tests" / "data" / "v25" / "hf"
    ref = _v26_goldens().make_adapter(str(hf_dir), v25=True)
    hf = mg.load_hf_dir(str(hf_dir))
    expected = ref.from_hf(dict(hf))
    assert "model.layers.0.self_attn.qkv_proj.weight" in expected
    assert_same(expected, moeckpt.from_hf_dir(hf_dir, compat="automodel"), "from_hf_dir compat", order=False)
    assert_same(expected, moeckpt.from_hf_dir(hf_dir), "from_hf_dir", order=False)
    ours = moeckpt.MiMoV2FlashStateDictAdapter(hf_dir, compat="automodel")
    assert_same(expected, ours.from_hf(hf), "from_hf", order=False)
    native = moeckpt.from_hf_dir(hf_dir)
    assert_same(ref.to_hf(dict(native)), ours.to_hf(native), "to_hf", order=False)
    with pytest.raises(moeckpt.UnsupportedLayoutError, match="FP8 export is unsupported"):
        ours.to_hf(native, quantization=True)


def test_v26_quantized_export_from_python_writes_the_published_layout(tmp_path):
    hf_dir = V26 / "tp4" / "hf"
    native = moeckpt.from_hf_dir(hf_dir)
    # The TP degree comes from the index beside the config, as from_hf reads it.
    ours = moeckpt.MiMoV2FlashStateDictAdapter(hf_dir)
    out = ours.to_hf(native, quantization=True)
    from safetensors.torch import load_file
    src = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        src.update(load_file(f))
    for k in ("model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.self_attn.qkv_proj.weight_scale_inv",
              "model.layers.1.mlp.experts.0.gate_proj.weight_scale"):
        assert out[k].dtype == src[k].dtype and out[k].shape == src[k].shape
        assert torch.equal(out[k].view(torch.uint8), src[k].view(torch.uint8)), k
    report = moeckpt.to_hf_dir(native, tmp_path / "out", hf_dir)
    assert report.tensors == len(out)
    assert json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["metadata"]["tp_size"] == 4


def test_v26_convert_single_tensor_casts_as_automodel_does():
    """0.7.0's convert_single_tensor_to_hf casts a V2.6 tensor on its own (its to_hf refuses)."""
    hf_dir = V26 / "tp2" / "hf"
    ref = _v26_goldens().make_adapter(str(hf_dir))
    native = moeckpt.from_hf_dir(hf_dir)
    ours = moeckpt.MiMoV2FlashStateDictAdapter(hf_dir, compat="automodel")
    for key in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                "model.layers.1.mlp.experts.gate_and_up_projs", "model.layers.0.self_attn.o_proj.weight"):
        want = dict(ref.convert_single_tensor_to_hf(key, native[key], quantization=True))
        got = dict(ours.convert_single_tensor_to_hf(key, native[key], quantization=True))
        assert_same(want, got, key)
