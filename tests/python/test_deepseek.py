"""The DeepSeek-V3 family (DeepSeek-V3/V3.1/R1, Kimi-K2) against NeMo Automodel 0.7.0 itself: its
DeepSeekV3StateDictAdapter as DeepseekV3ForCausalLM builds it (tools/make_deepseek_goldens.py), on
synthesized checkpoints with latent attention (q_lora_rank set and null), ragged blocks, dense and
MoE layers, a shared expert and an MTP layer."""
from __future__ import annotations

import importlib.util
import json
import types

import pytest
import torch

import moeckpt
from conftest import ROOT, assert_loads_like_automodel, assert_same, ep_read_bytes, fp8_round_trip_steps


def _dg():
    spec = importlib.util.spec_from_file_location("make_deepseek_goldens", ROOT / "tools" / "make_deepseek_goldens.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module", params=["deepseek-v3-tiny", "deepseek-v3-tiny-q-proj"])
def ds(request, tmp_path_factory, mg):
    path = tmp_path_factory.mktemp(request.param) / "hf"
    moeckpt.synth(path, request.param, seed=1)
    with open(path / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    return types.SimpleNamespace(name=request.param, path=path, config=config, hf=mg.load_hf_dir(str(path)),
                                 ref=_dg().make_adapter(config), n=int(config["n_routed_experts"]))


def test_adapter_matches_automodel(ds, mg):
    expected = ds.ref.from_hf(dict(ds.hf))
    assert any(".layers.3.mlp.experts.gate_and_up_projs" in k for k in expected)  # the MTP layer, grouped
    ours = moeckpt.DeepSeekV3StateDictAdapter(ds.config, compat="automodel")
    got = ours.from_hf(ds.hf)
    assert_same(expected, got, f"{ds.name} from_hf")
    # No fused-scale layout to read differently: the default mode gives the same tensors.
    assert_same(expected, moeckpt.DeepSeekV3StateDictAdapter(ds.config).from_hf(ds.hf), "default", order=False)
    native = dict(got)
    assert_same(ds.ref.to_hf(dict(native)), ours.to_hf(native), f"{ds.name} to_hf")
    assert_same(ds.ref.to_hf(dict(native), quantization=True), ours.to_hf(native, quantization=True),
                f"{ds.name} to_hf quantization=True")
    for fqn in ("model.layers.2.mlp.experts.down_projs", "model.layers.0.self_attn.o_proj.weight"):
        assert_same(dict(ds.ref.convert_single_tensor_to_hf(fqn, native[fqn], quantization=True)),
                    dict(ours.convert_single_tensor_to_hf(fqn, native[fqn], quantization=True)), fqn)
    # Uneven expert parallelism: 8 experts over 3 ranks, DTensors on the mesh's "ep" dimension.
    for rank in range(3):
        with mg.EPContext(3, rank, "fakepg") as mesh:
            ref = mg.to_plain(ds.ref.from_hf(dict(ds.hf), device_mesh=mesh))
            mine = mg.to_plain(ours.from_hf(ds.hf, device_mesh=mesh))
        assert_same(ref, mine, f"{ds.name} ep rank {rank}/3")


def test_should_quantize_key_is_automodels(ds):
    from nemo_automodel.components.models.deepseek_v3.state_dict_adapter import should_quantize_key

    ours = moeckpt.DeepSeekV3StateDictAdapter(ds.config, compat="automodel")
    native = ours.from_hf(ds.hf)
    keys = set(ds.hf) | set(native) | {"model.layers.3.shared_head.norm.weight", "model.layers.1.mlp.gate.bias"}
    assert [k for k in sorted(keys) if ours.should_quantize_key(k) != should_quantize_key(k)] == []


def test_folders_match_automodel(ds, mg, tmp_path):
    expected = ds.ref.from_hf(dict(ds.hf))
    assert_same(expected, moeckpt.from_hf_dir(ds.path, compat="automodel"), "from_hf_dir", order=False)
    assert_same(expected, moeckpt.from_hf_dir(ds.path), "from_hf_dir default", order=False)
    for rank in range(3):
        local = moeckpt.from_hf_dir(ds.path, ep_rank=rank, ep_size=3)
        ref = moeckpt.DeepSeekV3StateDictAdapter(ds.config, ep_rank=rank, ep_size=3).from_hf(ds.hf)
        assert_same(ref, local, f"from_hf_dir ep {rank}/3", order=False)
    # The default export: real block scales for exactly the published FP8 set; the synthesized
    # values are exact in FP8, so the folder written back is the input, byte for byte.
    moeckpt.to_hf_dir(expected, tmp_path / "back", ds.config)
    back = mg.load_hf_dir(str(tmp_path / "back"))
    assert_same(ds.hf, back, "to_hf_dir of from_hf_dir", order=False)
    ours = moeckpt.DeepSeekV3StateDictAdapter(ds.config)
    fp8 = sorted(k for k, v in back.items() if v.dtype == torch.float8_e4m3fn)
    assert fp8 == sorted(k for k in back if ours.is_published_fp8_key(k))
    assert all(k + "_scale_inv" in back for k in fp8)
    assert_same(ours.to_hf(expected, quantization=True), back, "to_hf block", order=False)


def test_the_other_familys_adapter_is_refused(ds, tiny_dir):
    with pytest.raises(moeckpt.UnsupportedLayoutError, match="DeepSeekV3StateDictAdapter"):
        moeckpt.MiMoV2FlashStateDictAdapter(ds.config)
    with pytest.raises(moeckpt.UnsupportedLayoutError, match="MiMoV2FlashStateDictAdapter"):
        moeckpt.DeepSeekV3StateDictAdapter(tiny_dir / "config.json")
    assert isinstance(moeckpt.adapter_for(ds.config), moeckpt.DeepSeekV3StateDictAdapter)
    assert type(moeckpt.adapter_for(tiny_dir / "config.json")) is moeckpt.MiMoV2FlashStateDictAdapter


def test_loads_automodels_model_as_automodel_does(ds):
    from nemo_automodel.components.models.common import BackendConfig
    from nemo_automodel.components.models.deepseek_v3.model import DeepseekV3ForCausalLM
    from transformers import DeepseekV3Config

    cfg = {k: v for k, v in ds.config.items() if k not in ("quantization_config", "model_type")}
    backend = BackendConfig(attn="sdpa", linear="torch", rms_norm="torch", experts="torch", dispatcher="torch",
                            enable_hf_state_dict_adapter=True)

    def model():
        torch.manual_seed(0)
        return DeepseekV3ForCausalLM.from_config(DeepseekV3Config(**cfg), backend=backend)

    unexpected = assert_loads_like_automodel(model, ds.hf, ds.path)
    assert unexpected and all(".layers.3." in k for k in unexpected)  # the model has no MTP layer


def test_round_trip_keeps_fp8_codes(ds, mg, tmp_path):
    # from-hf rounds the products to BF16, to-hf re-derives the scales.
    same, total, worst = fp8_round_trip_steps(ds.hf, ds.config, mg, tmp_path)
    assert same / total >= 0.999 and worst <= 1, (same, total, worst)

def test_an_ep_rank_reads_only_its_experts(ds):
    # The other ranks' experts, the MTP layer's included, and their scales are never read;
    # everything else once.
    whole, got, want = ep_read_bytes(ds.hf, ds.path, ds.n, 3)
    assert whole == want[-1]
    assert got == want[:-1]

def test_compat_06_is_refused_and_config_contradictions(ds, tmp_path):
    # Automodel 0.6.0's behaviour is reproduced for MiMo only: refused, not guessed.
    with pytest.raises(moeckpt.InvalidArgumentError, match="automodel-0.6"):
        moeckpt.DeepSeekV3StateDictAdapter(ds.config, compat="automodel-0.6").from_hf(ds.hf)
    with pytest.raises(moeckpt.InvalidArgumentError, match="automodel-0.6"):
        moeckpt.from_hf_dir(ds.path, compat="automodel-0.6")
    # A config that contradicts the tensors (the other q variant) is refused, naming the reason.
    cfg = dict(ds.config)
    cfg["q_lora_rank"] = None if ds.config.get("q_lora_rank") else 64
    with pytest.raises(moeckpt.ConfigMismatchError, match="q_lora_rank is"):
        moeckpt.DeepSeekV3StateDictAdapter(cfg).from_hf(ds.hf)
