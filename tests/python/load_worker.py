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
        low, high = needed_bytes(hf_dir, dests)
        assert low <= report.bytes_read <= high, (rank, low, report.bytes_read, high)
        low, high = needed_bytes(hf_dir, {k: torch.empty_like(v) for k, v in full.items()})
        assert low <= whole.bytes_read <= high, (low, whole.bytes_read, high)

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


def needed_bytes(hf_dir: str, dests: dict) -> tuple[int, int]:
    """The file bytes behind a rank's destinations, from the safetensors headers alone (an
    independent count): a grouped expert tensor's rows need those experts' projections and
    scales; rows [r0, r1) of another tensor need those rows of its weight and the 128-row scale
    blocks they fall in; whole tensors need everything. Returns (low, high): equal except for the
    full-attention K/V scales, whose rows follow the TP layout (a V row may use a K scale row), so
    they are bounded by none and all of those scale bytes."""
    import glob
    import json
    import os
    import struct

    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    size = {"F8_E4M3": 1, "BF16": 2, "F32": 4, "F16": 2, "I64": 8, "I32": 4, "U8": 1}
    info = {}  # name -> (shape, bytes per element)
    for f in glob.glob(os.path.join(hf_dir, "*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        info.update({k: (v["shape"], size[v["dtype"]]) for k, v in header.items() if k != "__metadata__"})

    def rows_bytes(name, r0, r1):
        shape, es = info[name]
        per_row = es
        for d in shape[1:]:
            per_row *= d
        return (min(r1, shape[0]) - r0) * per_row if shape else es

    low = high = 0
    for k, d in dests.items():
        rows = d.shape[0] if d.dim() else 1
        r0, r1 = 0, rows
        if hasattr(d, "placements"):
            shape, offset = compute_local_shape_and_global_offset(d.shape, d.device_mesh, d.placements)
            if shape:
                r0, r1 = offset[0], offset[0] + shape[0]
        if k.endswith(("gate_and_up_projs", "down_projs")):
            base = k.rsplit(".", 1)[0]
            projs = ("gate_proj", "up_proj") if k.endswith("gate_and_up_projs") else ("down_proj",)
            for e in range(r0, r1):
                for p in projs:
                    for t in (f"{base}.{e}.{p}.weight", f"{base}.{e}.{p}.weight_scale_inv"):
                        whole = rows_bytes(t, 0, info[t][0][0])
                        low, high = low + whole, high + whole
            continue
        assert k in info, k
        scale = k[:-len(".weight")] + ".weight_scale_inv" if k.endswith(".weight") else None
        w = rows_bytes(k, r0, r1) if info[k][0] else info[k][1]
        low, high = low + w, high + w
        if scale not in info:
            continue
        kv = k.endswith(("k_proj.weight", "v_proj.weight"))
        full_rows = info[scale][0][0]
        layer = k.rsplit(".self_attn.", 1)[0]
        plain = -(-info[f"{layer}.self_attn.k_proj.weight"][0][0] // 128) if kv else None
        if kv and info[f"{layer}.self_attn.k_proj.weight_scale_inv"][0][0] != plain:  # the TP layout
            high += rows_bytes(f"{layer}.self_attn.k_proj.weight_scale_inv", 0, 1 << 62)
            high += rows_bytes(f"{layer}.self_attn.v_proj.weight_scale_inv", 0, 1 << 62)
            continue
        s = rows_bytes(scale, r0 // 128, -(-r1 // 128)) if (r0, r1) != (0, rows) else rows_bytes(scale, 0, full_rows)
        low, high = low + s, high + s
    return low, high


if __name__ == "__main__":
    import os
    import sys

    run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), sys.argv[1], "")
