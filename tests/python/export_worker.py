"""One rank of a distributed export under torchrun (gloo, CPU): the grouped experts as DTensor shards
on an "ep" mesh, exported together with moeckpt.to_hf_dir(..., device_mesh=mesh); rank 0 checks the
folder byte for byte against the single-process export of the whole model.

    torchrun --nproc-per-node N export_worker.py HF_DIR OUT_DIR [extra: resume-check]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard

import moeckpt


def files(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def main() -> None:
    hf, out = Path(sys.argv[1]), Path(sys.argv[2])
    shard_size = int(sys.argv[3]) if len(sys.argv) > 3 else 200_000
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("ep",))
    full = moeckpt.from_hf_dir(hf)
    adapter = moeckpt.adapter_for(hf)
    n = adapter._config.n_routed_experts
    sd = {}
    for k, v in full.items():
        if adapter._config.is_grouped_expert_key(k):
            first, count = moeckpt._core.expert_range(n, world, rank)
            sd[k] = DTensor.from_local(v[first:first + count].clone(), mesh, [Shard(0)], run_check=False,
                                       shape=v.shape, stride=v.stride())
        elif k.endswith("norm.weight"):
            sd[k] = DTensor.from_local(v.clone(), mesh, [Replicate()], run_check=False)  # replicated DTensor
        else:
            sd[k] = v
    dst = out / "dist"
    report = moeckpt.to_hf_dir(sd, dst, hf, max_shard_bytes=shard_size, device_mesh=mesh)
    assert report.shards > 0
    dist.barrier()
    if rank == 0:
        ref = out / "one"
        moeckpt.to_hf_dir(full, ref, hf, max_shard_bytes=shard_size)
        a, b = files(dst), files(ref)
        assert sorted(a) == sorted(b), (sorted(a), sorted(b))
        for name in b:
            assert a[name] == b[name], f"{name} differs from the single-process export"
        assert not [p for p in dst.iterdir() if p.name.startswith(".")], list(dst.iterdir())
        print(f"export_worker: {len(a)} files identical over {world} ranks", flush=True)
    # A second export into the finished folder is refused on every rank, the same way.
    try:
        moeckpt.to_hf_dir(sd, dst, hf, max_shard_bytes=shard_size, device_mesh=mesh)
        raise AssertionError("a finished folder was written again")
    except moeckpt.DestinationError as e:
        assert "already holds a checkpoint" in str(e), e
    # A bad input on one rank only: every rank raises (none hangs in a collective), no index.
    bad = dict(sd)
    if rank == world - 1:
        bad["model.norm.weight"] = "not a tensor"
    try:
        moeckpt.to_hf_dir(bad, out / "bad", hf, max_shard_bytes=shard_size, device_mesh=mesh)
        raise AssertionError("an export with a bad tensor on one rank succeeded")
    except TypeError as e:
        assert rank == world - 1, e
    except moeckpt.DestinationError as e:
        assert rank != world - 1 and "another rank" in str(e), e
    assert not (out / "bad" / "model.safetensors.index.json").exists()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
