"""Body of test_load's 2-process job: one rank loading DTensor destinations (importable by
torch.multiprocessing)."""
from __future__ import annotations


def run(rank: int, world: int, hf_dir: str, store: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    import moeckpt

    if store:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    else:  # launched by torchrun: rank, world size and rendezvous from its environment
        dist.init_process_group("gloo")
    try:
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("ep",))
        full = moeckpt.from_hf_dir(hf_dir)
        whole = moeckpt.load_hf_checkpoint({k: torch.empty_like(v) for k, v in full.items()}, hf_dir)
        dests = {}
        for k, v in full.items():
            grouped = k.endswith(("gate_and_up_projs", "down_projs"))
            shard = grouped or (v.dim() == 2 and v.shape[0] >= world)
            dests[k] = distribute_tensor(torch.zeros_like(v), mesh, [Shard(0) if shard else Replicate()])
        report = moeckpt.load_hf_checkpoint(dests, hf_dir)
        assert report.missing == [] and report.unexpected == []
        for k, v in full.items():
            d = dests[k]
            shape, offset = compute_local_shape_and_global_offset(d.shape, d.device_mesh, d.placements)
            r0 = offset[0] if offset else 0
            want = v[r0:r0 + shape[0]] if shape else v
            assert torch.equal(d.to_local().view(torch.uint8), want.contiguous().view(torch.uint8)), (rank, k)
        assert report.bytes_read < 0.8 * whole.bytes_read, (report.bytes_read, whole.bytes_read)

        # Automodel's EP split as plain tensors holding the rank's experts (device_mesh given):
        # q, rem = divmod(n, world), the first rem ranks one more.
        n = full["model.layers.1.mlp.experts.gate_and_up_projs"].shape[0]
        q, rem = divmod(n, world)
        first, count = rank * q + min(rank, rem), q + (rank < rem)
        local = {k: torch.zeros_like(v[first:first + count]) for k, v in full.items()
                 if k.endswith(("gate_and_up_projs", "down_projs"))}
        report = moeckpt.load_hf_checkpoint(local, hf_dir, device_mesh=mesh)
        for k, t in local.items():
            assert torch.equal(t, full[k][first:first + count]), (rank, k)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    import os
    import sys

    run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), sys.argv[1], "")
