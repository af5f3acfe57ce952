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


class _Staging:
    """Pieces of destinations that are not host memory, copied in as the engine delivers them: for
    CUDA through a ring of pinned host buffers with non-blocking copies (the reads of the next pieces
    overlap the transfers), elsewhere straight. Host memory stays bounded by the engine's task
    buffers plus the ring."""

    def __init__(self, slots: int = 4):
        self.targets: dict = {}  # destination index -> its flat uint8 view
        self.ring: list = [None] * slots  # (pinned buffer, event)
        self.next = 0

    def add(self, index: int, t: torch.Tensor) -> None:
        self.targets[index] = t.view(-1).view(torch.uint8)

    def __call__(self, index: int, offset: int, piece: torch.Tensor) -> None:
        dst = self.targets[index][offset:offset + piece.numel()]
        if dst.device.type != "cuda":
            dst.copy_(piece)
            return
        slot = self.ring[self.next]
        if slot is None or slot[0].numel() < piece.numel():
            slot = (torch.empty(max(piece.numel(), 1 << 20), dtype=torch.uint8, pin_memory=True),
                    torch.cuda.Event())
        else:
            slot[1].synchronize()  # the transfer that last used this buffer is done
        buf = slot[0][:piece.numel()]
        buf.copy_(piece)
        dst.copy_(buf, non_blocking=True)
        slot[1].record()
        self.ring[self.next] = slot
        self.next = (self.next + 1) % len(self.ring)

    def finish(self) -> None:
        if any(s is not None for s in self.ring):
            torch.cuda.synchronize()


def _load(dests: dict, folder: str, experts: Optional[tuple[int, int, int]], dtype: torch.dtype,
          compat: Optional[str], attn_backend: str, threads: int, max_memory: int,
          stage_all: bool = False, ep: tuple[int, int] = (1, 0)) -> tuple:
    """The engine call behind load_hf_checkpoint and from_hf_dir: fills ``dests`` (name -> tensor
    or DTensor) in place. ``experts`` = (first, count, all): plain grouped-expert tensors of
    ``count`` rows hold those experts (of a plan of every expert); ``ep`` = (size, rank): the plan
    is that EP rank's (grouped destinations of its shapes). Returns (missing, unexpected, tensors,
    bytes read)."""
    rows, keep, staged = [], [], []
    staging = _Staging()
    for name, t in dests.items():
        if not isinstance(t, torch.Tensor):
            continue
        local, shape, row0, row1 = _local_rows(name, t, experts if _core.is_grouped_expert_key(name) else None)
        target = local
        if not local.is_contiguous():  # strided: through a host copy of its own
            target = torch.empty(local.shape, dtype=local.dtype, device="cpu")
            staged.append((local, target))
        nbytes = target.numel() * target.element_size()
        if target.device.type != "cpu" or stage_all:  # pieces through the staging ring
            staging.add(len(rows), target)
            address = 0
        else:
            address = target.data_ptr()
        keep.append(target)
        rows.append((name, T.dtype_name(target.dtype), shape, row0, row1, address, nbytes))
    with torch.no_grad():
        result = _core.load_into(
            str(folder), rows, T.out_dtype_name(dtype), T.compat_name(compat),
            T.attn_backend(attn_backend), int(threads), int(max_memory), staging if staging.targets else None,
            int(ep[0]), int(ep[1]))
        staging.finish()
        for dst, src in staged:
            dst.copy_(src)
    return result


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
    _stage_all: bool = False,
) -> LoadReport:
    """Fills a model's parameters in place from an HF checkpoint folder.

    ``model`` is an ``nn.Module`` whose ``state_dict()`` is in the native layout (NeMo Automodel's
    ``MiMoV2FlashForCausalLM``), or a dict of destination tensors. A destination may be a plain
    tensor, or a DTensor whose placements are ``Shard(0)`` (grouped experts on the EP dimension,
    FSDP2 rows) or ``Replicate()``: each rank reads only the bytes behind its local rows (its
    experts; the scale rows its rows need) and dequantizes them with the same kernels and rules as
    ``from_hf_dir`` (``compat`` as there) straight into the destination's storage; values are
    converted to the destination's dtype as ``copy_`` does. CUDA and non-contiguous destinations
    are filled through pinned host buffers with non-blocking copies as the pieces are dequantized
    (host memory bounded by ``max_memory`` plus a small ring); non-contiguous destinations through a
    host copy each. With ``device_mesh``, plain
    grouped-expert tensors may hold just this EP rank's experts (Automodel's split).

    ``dtype`` is the dequantization's own dtype (``torch.bfloat16`` or ``torch.float32``); by
    default float32 when every multi-dimensional floating destination is float32, else bfloat16.
    Checkpoint tensors the model lacks are reported in ``unexpected``; a destination with no source
    is an error naming it (``strict=True``) or reported in ``missing``. Ctrl-C stops the load at the
    engine's next task; the KeyboardInterrupt is raised once it has stopped (the destinations then
    hold part of the checkpoint).
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
    missing, unexpected, n, bytes_read = _load(
        dests, folder, experts, dtype, compat, attn_backend, threads, max_memory, _stage_all)
    if strict and missing:
        raise _core.ConfigMismatchError(
            f"moeckpt: {path}: {len(missing)} model tensors have no source in the checkpoint: "
            f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    return LoadReport(list(missing), list(unexpected), int(n), int(bytes_read), time.perf_counter() - start)
