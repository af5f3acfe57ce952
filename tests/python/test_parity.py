"""compat="automodel" against NeMo Automodel 0.7.0's MiMoV2FlashStateDictAdapter itself, run side by
side in this process on the same tensors: byte for byte, keys in the same order."""
from __future__ import annotations

import pytest
import torch

import moeckpt
from conftest import assert_same


def ref_from_hf(case, mesh=None):
    return case.ref.from_hf(dict(case.hf), device_mesh=mesh)  # the reference pops from its input


@pytest.fixture(scope="module")
def native(case):
    """(reference from_hf, ours) with all experts."""
    return ref_from_hf(case), case.ours(compat="automodel").from_hf(case.hf)


def test_from_hf_is_byte_identical(case, native):
    ref, ours = native
    assert_same(ref, ours, f"{case.name} from_hf")
    assert any(k.endswith("mlp.experts.gate_and_up_projs") for k in ours)


def test_from_hf_leaves_its_input_alone(case):
    before = dict(case.hf)
    case.ours(compat="automodel").from_hf(case.hf)
    assert list(case.hf) == list(before) and all(case.hf[k] is before[k] for k in before)


@pytest.mark.parametrize("ep_size", [2, 3, 4])
def test_from_hf_every_ep_rank_is_byte_identical(case, mg, ep_size):
    # The reference under a real DeviceMesh on torch's single-process fake backend: grouped experts
    # come back as DTensors; ours, given the same mesh, must agree on the local shards and placement.
    from torch.distributed.tensor import DTensor, Shard

    ours = case.ours(compat="automodel")
    for rank in range(ep_size):
        with mg.EPContext(ep_size, rank, "fakepg") as mesh:
            ref = ref_from_hf(case, mesh)
            got = ours.from_hf(case.hf, device_mesh=mesh)
            grouped = [k for k in got if k.endswith(("gate_and_up_projs", "down_projs"))]
            assert grouped
            for k in grouped:
                assert isinstance(got[k], DTensor) and isinstance(ref[k], DTensor), k
                assert got[k].placements == ref[k].placements == (Shard(0),)
                assert got[k].shape == ref[k].shape, k
            assert_same(ref, got, f"{case.name} from_hf ep {rank}/{ep_size}")
        # Without a mesh, ep_rank/ep_size select the same experts as plain tensors.
        plain = case.ours(compat="automodel", ep_rank=rank, ep_size=ep_size).from_hf(case.hf)
        assert_same({k: v.to_local() if hasattr(v, "to_local") else v for k, v in ref.items()}, plain,
                     f"{case.name} from_hf ep {rank}/{ep_size} without mesh")


@pytest.mark.parametrize("quantization", [False, True])
def test_to_hf_is_byte_identical(case, native, quantization):
    ref_native, ours_native = native
    ref = case.ref.to_hf(dict(ref_native), quantization=quantization)
    got = case.ours(compat="automodel").to_hf(ours_native, quantization=quantization)
    assert_same(ref, got, f"{case.name} to_hf quantization={quantization}")
    assert any(v.dtype == torch.float8_e4m3fn for v in got.values()) == quantization


@pytest.mark.parametrize("quantization", [False, True])
@pytest.mark.parametrize("regex", [r"model\.layers\.1\..*", r"lm_head", r".*_scale_inv", r"layers", r".*experts\.[02]\."])
def test_to_hf_exclude_key_regex(case, native, quantization, regex):
    ref_native, ours_native = native
    ref = case.ref.to_hf(dict(ref_native), exclude_key_regex=regex, quantization=quantization)
    got = case.ours(compat="automodel").to_hf(ours_native, exclude_key_regex=regex, quantization=quantization)
    assert_same(ref, got, f"{case.name} to_hf exclude {regex!r}")


@pytest.mark.parametrize("quantization", [False, True])
def test_convert_single_tensor_to_hf_is_byte_identical(case, native, quantization):
    ref_native, ours_native = native
    ours = case.ours(compat="automodel")
    n = 0
    for fqn, tensor in ref_native.items():
        ref = case.ref.convert_single_tensor_to_hf(fqn, tensor, quantization=quantization)
        got = ours.convert_single_tensor_to_hf(fqn, ours_native[fqn], quantization=quantization)
        assert [k for k, _ in got] == [k for k, _ in ref], fqn
        assert_same(dict(ref), dict(got), f"{case.name} convert_single_tensor_to_hf({fqn})")
        n += len(got)
    assert n > len(ref_native)


def test_to_hf_of_special_values(case, native, mg):
    # FP8 cast edge cases (447..466, +-inf, NaN, subnormal ties) planted in the BF16 native tensors.
    ref_native, _ = native
    targets = mg.special_targets(ref_native, case.config)
    planted, _ = mg.plant_specials(ref_native, targets)
    planted = {k: planted[k] for k in targets}
    ref = case.ref.to_hf(dict(planted), quantization=True)
    got = case.ours(compat="automodel").to_hf(planted, quantization=True)
    assert_same(ref, got, f"{case.name} to_hf special values")
    assert any(torch.isnan(v.float()).any() for v in got.values() if v.dtype == torch.float8_e4m3fn)


def test_to_hf_of_ep_dtensor_shards(case, mg, native):
    # An EP rank's DTensor shard: expert ids offset by the rank's first expert (even splits, as the
    # reference supports them).
    ours = case.ours(compat="automodel")
    size = 2
    if case.n_experts % size:
        pytest.skip("the reference supports even splits only")
    for rank in range(size):
        with mg.EPContext(size, rank, "fakepg") as mesh:
            ref_shard = ref_from_hf(case, mesh)
            our_shard = ours.from_hf(case.hf, device_mesh=mesh)
            ref = case.ref.to_hf(ref_shard, quantization=True)
            got = ours.to_hf(our_shard, quantization=True)
        assert_same(ref, got, f"{case.name} to_hf of ep rank {rank}/{size}")
        first = rank * case.n_experts // size
        assert any(f".experts.{first}.gate_proj.weight" in k for k in got)


def test_prefix_follows_the_last_from_hf(case, mg):
    # Expert keys without "model.": the reference writes to_hf expert keys without it afterwards.
    hf = {k.removeprefix("model."): v for k, v in case.hf.items()}
    ref_adapter = mg.make_adapter(case.config)
    ref = ref_adapter.to_hf(ref_adapter.from_hf(dict(hf)), quantization=True)
    ours = case.ours(compat="automodel")
    got = ours.to_hf(ours.from_hf(hf), quantization=True)
    assert_same(ref, got, f"{case.name} no model. prefix")
    assert any(k.startswith("layers.1.mlp.experts.0.") for k in got)


def test_float32_output(case, mg):
    cfg = dict(case.config, torch_dtype="float32")
    ref = mg.make_adapter(cfg).from_hf(dict(case.hf))
    got = moeckpt.MiMoV2FlashStateDictAdapter(cfg, dtype=torch.float32, compat="automodel").from_hf(case.hf)
    assert_same(ref, got, f"{case.name} from_hf float32")
    assert got[next(k for k in got if k.endswith("gate_and_up_projs"))].dtype == torch.float32


def test_should_quantize_key_matches_the_reference(case, native):
    from nemo_automodel.components.models.mimo_v2_flash.state_dict_adapter import _should_quantize_key

    keys = list(case.ref.to_hf(dict(native[0]))) + ["visual.x.weight", "audio.y.weight", "model.visual.x.weight",
                                                   "a.bias", "model.mtp.layers.0.enorm.weight"]
    assert [moeckpt.should_quantize_key(k) for k in keys] == [_should_quantize_key(k) for k in keys]


def test_config_as_object_path_or_dict(case, native):
    # The reference's own transformers config object, the folder, the file: same adapter.
    ref_native, _ = native
    for cfg in (case.ref.config, case.path, case.path / "config.json"):
        got = moeckpt.MiMoV2FlashStateDictAdapter(cfg, compat="automodel").from_hf(case.hf)
        assert_same(ref_native, got, f"{case.name} config {type(cfg).__name__}")
