"""from_hf_dir / to_hf_dir: the streaming engine over checkpoint folders."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import moeckpt
from conftest import assert_same


def load_dir(path) -> dict[str, torch.Tensor]:
    index = os.path.join(path, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    out = {}
    for f in files:
        out.update(load_file(os.path.join(path, f)))
    return out


@pytest.mark.parametrize("compat", [None, "automodel"])
@pytest.mark.parametrize("ep_size", [1, 2, 3, 4])
def test_from_hf_dir_equals_from_hf(case, case_ragged_nonan, compat, ep_size):
    if compat is None and case.name == "ragged":
        case = case_ragged_nonan  # the default mode refuses the planted NaN codes (see test_errors)
    for rank in range(ep_size):
        want = case.ours(compat=compat, ep_rank=rank, ep_size=ep_size).from_hf(case.hf)
        got = moeckpt.from_hf_dir(case.path, ep_rank=rank, ep_size=ep_size, compat=compat)
        assert_same(want, got, f"{case.name} ep {rank}/{ep_size} compat={compat}", order=False)


def test_from_hf_dir_reads_only_the_ranks_bytes(case_tiny):
    from moeckpt import _core

    hf, n = case_tiny.hf, case_tiny.n_experts
    total = sum(v.numel() * v.element_size() for v in hf.values())

    def expert_bytes(ids, scales_only=False):
        return sum(v.numel() * v.element_size() for k, v in hf.items()
                   if ".mlp.experts." in k and ".mtp." not in k and (not scales_only or k.endswith("_scale_inv"))
                   and int(k.split(".mlp.experts.")[1].split(".")[0]) in ids)

    def read(size, rank):
        # from_hf_dir's own path: allocate the rank's tensors, then the engine fills them.
        from moeckpt.load import _load

        dests = moeckpt.from_hf_dir(case_tiny.path, ep_rank=rank, ep_size=size)
        first, count = _core.expert_range(n, size, rank)
        return _load(dests, str(case_tiny.path), (first, count, n), torch.bfloat16, None, "sdpa", 0, 1 << 30)[3]

    read_all = read(1, 0)
    # Every byte once (plus a few fused K/V scale bytes that serve both k and v); no scale is read
    # twice: the tasks check the scales they use.
    assert total <= read_all < total + 1024
    _, meta, _ = _core.from_hf_layout(str(case_tiny.path), 4, 0, "BF16", "none")
    assert meta["moeckpt.expert_count"] == str(_core.expert_range(n, 4, 0)[1])
    for rank in range(4):
        first, count = _core.expert_range(n, 4, rank)
        others = set(range(n)) - set(range(first, first + count))
        # The other ranks' experts and their scales: never read.
        assert read(4, rank) == read_all - expert_bytes(others), rank
        _, meta, _ = _core.from_hf_layout(str(case_tiny.path), 4, rank, "BF16", "none")
        assert meta["moeckpt.expert_start"] == str(first) and meta["moeckpt.expert_count"] == str(count)


def test_from_hf_dir_float32(case_tiny):
    want = case_tiny.ours(dtype=torch.float32).from_hf(case_tiny.hf)
    got = moeckpt.from_hf_dir(case_tiny.path, dtype=torch.float32)
    assert_same(want, got, "float32", order=False)


@pytest.mark.parametrize("compat,quant", [(None, "block"), (None, "cast"), (None, "none"), ("automodel", "cast")])
def test_to_hf_dir_equals_to_hf(case_tiny, tmp_path, compat, quant):
    ad = case_tiny.ours(compat=compat, quant=quant)
    native = ad.from_hf(case_tiny.hf)
    want = ad.to_hf(native, quantization=True)
    report = moeckpt.to_hf_dir(native, tmp_path / "out", case_tiny.config, quant=quant, compat=compat,
                               max_shard_bytes=4 << 20)
    assert report.tensors == len(want) and report.shards > 1
    assert os.path.exists(tmp_path / "out" / "model.safetensors.index.json")
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".") or n.endswith(".tmp")]
    assert_same(want, load_dir(tmp_path / "out"), f"to_hf_dir {compat} {quant}", order=False)
    cfg = json.load(open(tmp_path / "out" / "config.json"))
    assert ("quantization_config" in cfg) == (quant != "none")
    assert cfg["n_routed_experts"] == case_tiny.config["n_routed_experts"]


def test_folder_round_trip(case_tiny, tmp_path):
    native = moeckpt.from_hf_dir(case_tiny.path, dtype=torch.float32)
    moeckpt.to_hf_dir(native, tmp_path / "back", case_tiny.path)  # config from a folder path
    assert_same(case_tiny.hf, load_dir(tmp_path / "back"), "F32 round trip", order=False)
    with pytest.raises(moeckpt.Error, match="already holds a checkpoint"):
        moeckpt.to_hf_dir(native, tmp_path / "back", case_tiny.config)


def test_to_hf_dir_of_ep_shards(case_tiny, tmp_path):
    full = case_tiny.ours().to_hf(case_tiny.ours().from_hf(case_tiny.hf), quantization=True)
    merged = {}
    for rank in range(2):
        shard = moeckpt.from_hf_dir(case_tiny.path, ep_rank=rank, ep_size=2)
        moeckpt.to_hf_dir(shard, tmp_path / f"r{rank}", case_tiny.config, ep_rank=rank, ep_size=2)
        merged.update(load_dir(tmp_path / f"r{rank}"))
    assert_same(full, merged, "2 EP folders", order=False)


def test_from_hf_dir_of_a_folder_holding_only_the_ranks_experts(case_tiny, tmp_path, mg):
    # A folder pre-split for EP rank 0 of 2 (the other rank's experts removed): that rank loads
    # from it as from the whole checkpoint.
    from moeckpt import _core
    from safetensors.torch import save_file

    first, count = _core.expert_range(case_tiny.n_experts, 2, 0)
    keep = {k: v for k, v in case_tiny.hf.items()
            if ".mlp.experts." not in k or first <= int(k.split(".mlp.experts.")[1].split(".")[0]) < first + count}
    assert len(keep) < len(case_tiny.hf)
    (tmp_path / "part").mkdir()
    save_file(keep, str(tmp_path / "part" / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "part" / "config.json").write_text(json.dumps(case_tiny.config))
    assert_same(moeckpt.from_hf_dir(case_tiny.path, ep_rank=0, ep_size=2),
                moeckpt.from_hf_dir(tmp_path / "part", ep_rank=0, ep_size=2), "pre-split", order=False)
