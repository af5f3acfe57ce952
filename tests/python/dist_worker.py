"""Body of test_distributed: one process of a 2-process gloo job (importable by torch.multiprocessing)."""
from __future__ import annotations

import json
import os

import torch


def run(rank: int, world: int, hf_dir: str, store: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    import moeckpt
    from conftest import _load_make_goldens, assert_same, raw

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("ep",))
        mg = _load_make_goldens()
        with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        hf = mg.load_hf_dir(hf_dir)
        n = int(cfg["n_routed_experts"])
        per = n // world

        for compat in (None, "automodel"):
            ad = moeckpt.MiMoV2FlashStateDictAdapter(cfg, compat=compat)
            full = ad.from_hf(hf)  # all experts, plain tensors
            got = ad.from_hf(hf, device_mesh=mesh)
            from_dir = moeckpt.from_hf_dir(hf_dir, compat=compat, device_mesh=mesh)
            grouped = [k for k in got if k.endswith(("gate_and_up_projs", "down_projs"))]
            assert len(grouped) == 6, grouped
            for k in grouped:
                for t in (got[k], from_dir[k]):
                    assert isinstance(t, DTensor), k
                    assert t.placements == (Shard(0),) and t.device_mesh == mesh
                    assert t.shape == full[k].shape  # global shape: every expert
                    assert t.to_local().shape[0] == per
                    assert raw(t.to_local()) == raw(full[k][rank * per:(rank + 1) * per]), k
                # All-gather over gloo gives the whole tensor back.
                assert raw(got[k].full_tensor()) == raw(full[k]), k
            assert_same({k: v for k, v in got.items() if k not in grouped},
                        {k: v for k, v in from_dir.items() if k not in grouped}, "from_hf_dir", order=False)

        # The reference itself under the same real mesh: same local shards, same to_hf of the shard.
        ref = mg.make_adapter(cfg)
        ours = moeckpt.MiMoV2FlashStateDictAdapter(cfg, compat="automodel")
        ref_sd = ref.from_hf(dict(hf), device_mesh=mesh)
        our_sd = ours.from_hf(hf, device_mesh=mesh)
        assert_same(ref_sd, our_sd, f"rank {rank} from_hf")
        ref_hf = ref.to_hf(ref_sd, quantization=True)
        our_hf = ours.to_hf(our_sd, quantization=True)
        assert_same(ref_hf, our_hf, f"rank {rank} to_hf")
        assert f"model.layers.1.mlp.experts.{rank * per}.gate_proj.weight" in our_hf
        assert f"model.layers.1.mlp.experts.{(1 - rank) * per}.gate_proj.weight" not in our_hf
        dist.barrier()
    finally:
        dist.destroy_process_group()
