"""Writes a genuine sharded save with torch's DCP Hugging Face writer (run under torchrun, gloo on
CPU): every rank saves its DTensor pieces, HuggingFaceStorageWriter(save_distributed=True) names
the files shard-RRRRR-model-IIIII-of-NNNNN.safetensors.

    torchrun --nproc-per-node W dcp_sharded_save.py SPEC.json OUT

SPEC.json: {"seed": int, "writer": "torch" | "automodel", "config": {...} (optional),
"tensors": [{"name", "dtype", "shape", "placement", "file"}]} or, instead of "tensors",
"source": an HF checkpoint folder whose tensors are saved (experts on their owner rank, e % W;
o_proj/down_proj split by columns; other matrices by rows; vectors replicated; "files" output
files, tensor i in file i % files + 1), where
placement is "shard0" (rows, uneven where they do not divide), "shard1" (columns), "replicate",
or "rank:R" (a plain tensor only rank R holds: an EP expert on its owner), and file the
consolidated file index (1-based). The full tensors are made from the seed on every rank, so the
test can rebuild them; OUT/../reference/full.safetensors gets them in their HF dtype (written by
rank 0) for the comparison.

writer "automodel": NeMo Automodel 0.7.0's _HuggingFaceStorageWriter(save_sharded=True) as its
Checkpointer uses it: floating tensors are saved as F32 (master weights) and dtype is their HF
dtype, recorded with the file layout in OUT/.hf_metadata/ (fqn_to_file_index_mapping.json,
fqn_to_dtype_mapping.json, config.json) as its addons write them.
"""
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint import HuggingFaceStorageWriter
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
          "I64": torch.int64, "I32": torch.int32, "BOOL": torch.bool, "U8": torch.uint8}


def full_tensor(i, spec, seed):
    g = torch.Generator().manual_seed(seed * 1000 + i)
    shape = spec["shape"]
    dt = DTYPES[spec["dtype"]]
    if dt.is_floating_point:
        return torch.randn(shape, generator=g, dtype=torch.float32).to(dt)
    if dt == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    return torch.randint(0, 200, shape, generator=g).to(dt)


def tensors_of_folder(spec, world):
    from safetensors import safe_open
    import glob
    rows, n = [], spec.get("files", 1)
    for path in sorted(glob.glob(os.path.join(spec["source"], "*.safetensors"))):
        with safe_open(path, "pt") as f:
            for name in f.keys():
                rows.append((name, f.get_tensor(name)))
    rows.sort()
    out = []
    for i, (name, x) in enumerate(rows):
        parts = name.split(".")
        if "experts" in parts and parts[parts.index("experts") + 1].isdigit():
            placement = f"rank:{int(parts[parts.index('experts') + 1]) % world}"
        elif x.dim() >= 2 and ("o_proj" in name or "down_proj" in name):
            placement = "shard1"
        elif x.dim() >= 2:
            placement = "shard0"
        else:
            placement = "replicate"
        out.append(({"name": name, "placement": placement, "file": i % n + 1}, x))
    return out


def main():
    spec = json.load(open(sys.argv[1]))
    out = sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if "source" in spec:
        given = tensors_of_folder(spec, world)
        for t, x in given:
            t["dtype"] = {v: k for k, v in DTYPES.items()}[x.dtype]
        spec["tensors"] = [t for t, _ in given]
        sources = [x for _, x in given]
    mesh = init_device_mesh("cpu", (world,))
    automodel = spec.get("writer", "torch") == "automodel"
    state, mapping, full, dtypes = {}, {}, {}, {}
    for i, t in enumerate(spec["tensors"]):
        x = sources[i] if "source" in spec else full_tensor(i, t, spec["seed"])
        dtypes[t["name"]] = t["dtype"]
        if automodel and x.dtype.is_floating_point:  # the F32 master weight
            x = x.float() if "source" in spec else full_tensor(i, dict(t, dtype="F32"), spec["seed"])
        full[t["name"]] = x.to(DTYPES[t["dtype"]])
        mapping[t["name"]] = t.get("file", 1)
        p = t["placement"]
        if p.startswith("rank:"):
            if rank == int(p[5:]):
                state[t["name"]] = x
            continue
        placement = {"shard0": Shard(0), "shard1": Shard(1), "replicate": Replicate()}[p]
        state[t["name"]] = distribute_tensor(x, mesh, [placement])
    if automodel:
        from nemo_automodel.components.checkpoint._backports.hf_storage import (
            _HuggingFaceStorageWriter)
        writer = _HuggingFaceStorageWriter(out, save_sharded=True, fqn_to_index_mapping=mapping,
                                           fqn_to_dtype_mapping=dtypes)
    else:
        writer = HuggingFaceStorageWriter(out, fqn_to_index_mapping=mapping, save_distributed=True)
    dcp.save(state, storage_writer=writer)
    if automodel and rank == 0:
        meta = os.path.join(out, ".hf_metadata")
        os.makedirs(meta, exist_ok=True)
        with open(os.path.join(meta, "fqn_to_file_index_mapping.json"), "w") as f:
            json.dump(mapping, f, indent=2, sort_keys=True)
        with open(os.path.join(meta, "fqn_to_dtype_mapping.json"), "w") as f:
            json.dump(dtypes, f, indent=2, sort_keys=True)
    if spec.get("metadata_files") and rank == 0:  # a tokenizer's files, as Automodel's addons save them
        os.makedirs(os.path.join(out, ".hf_metadata"), exist_ok=True)
        for name, text in spec["metadata_files"].items():
            with open(os.path.join(out, ".hf_metadata", name), "w") as f:
                f.write(text)
    if spec.get("config") and rank == 0:
        os.makedirs(os.path.join(out, ".hf_metadata"), exist_ok=True)
        with open(os.path.join(out, ".hf_metadata", "config.json"), "w") as f:
            json.dump(spec["config"], f, indent=2)
    dist.barrier()
    if rank == 0 and not spec.get("no_reference"):
        os.makedirs(os.path.join(out, "..", "reference"), exist_ok=True)
        save_file({k: v.contiguous() for k, v in full.items()},
                  os.path.join(out, "..", "reference", "full.safetensors"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
