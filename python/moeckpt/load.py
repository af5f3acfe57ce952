"""Load an HF checkpoint straight into a training model: each rank reads the bytes behind its own
parameters (its experts, its rows of a sharded tensor) and writes them in place."""
from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple, Optional

import torch

from . import _core
from . import _tensors as T
from .adapter import _mesh_rank_size


class LoadReport(NamedTuple):
    missing: list  # destinations the checkpoint has no tensor for
    unexpected: list  # native tensors of the checkpoint the model lacks (e.g. MTP layers)
    tensors: int  # destinations filled
    bytes_read: int
    seconds: float


def _local_rows(name: str, t: torch.Tensor, experts: Optional[tuple[int, int]]) -> tuple:
    """(local tensor, global shape, row0, row1) of a destination: a DTensor's local shard (Shard(0)
    gives a row range, Replicate the whole tensor); a plain tensor whole, or, for a grouped-expert
    tensor holding one EP rank's experts (``experts`` = (first, count, all)), those rows."""
    if T.is_dtensor(t):
        from torch.distributed.tensor import Replicate, Shard
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        for p in t.placements:
            if not isinstance(p, (Replicate, Shard)) or (isinstance(p, Shard) and p.dim != 0):
                raise _core.UnsupportedLayoutError(
                    f"moeckpt: {name}: placement {p} (expected Shard(0) or Replicate())")
        local = t.to_local()
        shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
        row0 = int(offset[0]) if len(offset) else 0
        rows = int(shape[0]) if len(shape) else 1
        return local, list(t.shape), row0, row0 + rows
    if experts is not None and t.dim() == 3 and t.shape[0] == experts[1] != experts[2]:
        return t, [experts[2], *t.shape[1:]], experts[0], experts[0] + experts[1]
    return t, list(t.shape), 0, -1


def load_hf_checkpoint(
    model: Any,
    path: "str | os.PathLike[str]",
    *,
    device_mesh: Any = None,
    compat: Optional[str] = None,
    attn_backend: str = "sdpa",
    strict: bool = True,
    dtype: Optional[torch.dtype] = None,
    threads: int = 0,
    max_memory: int = 1 << 30,
    revision: Optional[str] = None,
) -> LoadReport:
    """Fills a model's parameters in place from an HF checkpoint folder.

    ``model`` is an ``nn.Module`` whose ``state_dict()`` is in the native layout (NeMo Automodel's
    ``MiMoV2FlashForCausalLM``), or a dict of destination tensors. A destination may be a plain
    tensor, or a DTensor whose placements are ``Shard(0)`` (grouped experts on the EP dimension,
    FSDP2 rows) or ``Replicate()``: each rank reads only the bytes behind its local rows (its
    experts; the scale rows its rows need) and dequantizes them with the same kernels and rules as
    ``from_hf_dir`` (``compat`` as there) straight into the destination's storage; values are
    converted to the destination's dtype as ``copy_`` does. CUDA and non-contiguous destinations
    are filled through a host staging tensor per destination. With ``device_mesh``, plain
    grouped-expert tensors may hold just this EP rank's experts (Automodel's split).

    ``dtype`` is the dequantization's own dtype (``torch.bfloat16`` or ``torch.float32``); by
    default float32 when every multi-dimensional floating destination is float32, else bfloat16.
    Checkpoint tensors the model lacks are reported in ``unexpected``; a destination with no source
    is an error naming it (``strict=True``) or reported in ``missing``.
    """
    start = time.perf_counter()
    dests = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    from .io import _resolve

    folder = _resolve(path, revision)
    if dtype is None:
        weights = [t.dtype for t in dests.values()
                   if isinstance(t, torch.Tensor) and t.dim() > 1 and t.dtype.is_floating_point]
        dtype = torch.float32 if weights and all(d == torch.float32 for d in weights) else torch.bfloat16
    experts = None
    if device_mesh is not None:
        rank, size = _mesh_rank_size(device_mesh)
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            n = T.parse_config(json.load(f)).n_routed_experts
        experts = (*_core.expert_range(n, size, rank), n)
    rows, keep, staged = [], [], []
    for name, t in dests.items():
        if not isinstance(t, torch.Tensor):
            continue
        local, shape, row0, row1 = _local_rows(name, t, experts if _core.is_grouped_expert_key(name) else None)
        target = local
        if local.device.type != "cpu" or not local.is_contiguous():
            pin = local.device.type == "cuda" and torch.cuda.is_available()
            target = torch.empty(local.shape, dtype=local.dtype, device="cpu", pin_memory=pin)
            staged.append((local, target))
        keep.append(target)
        rows.append([name, T.dtype_name(target.dtype), shape, row0, row1, target.data_ptr(),
                     target.numel() * target.element_size()])
    with torch.no_grad():
        missing, unexpected, n, bytes_read = _core.load_into(
            folder, [tuple(r) for r in rows], T.out_dtype_name(dtype), T.compat_name(compat),
            T.attn_backend(attn_backend), int(threads), int(max_memory))
        for dst, src in staged:
            dst.copy_(src, non_blocking=src.is_pinned())
        if any(src.is_pinned() for _, src in staged):
            torch.cuda.synchronize()
    del keep
    if strict and missing:
        raise _core.ConfigMismatchError(
            f"moeckpt: {path}: {len(missing)} model tensors have no source in the checkpoint: "
            f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    return LoadReport(list(missing), list(unexpected), int(n), int(bytes_read), time.perf_counter() - start)
