"""Load an HF checkpoint straight into a training model: each rank reads the bytes behind its own
parameters (its experts, its rows of a sharded tensor) and writes them in place."""
from __future__ import annotations

import bisect
import json
import os
import sys
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
    tensor (or expert bias) holding one EP rank's experts (``experts`` = (first, count, all)), those rows."""
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
    if experts is not None and t.dim() in (2, 3) and t.shape[0] == experts[1] != experts[2]:
        return t, [experts[2], *t.shape[1:]], experts[0], experts[0] + experts[1]
    return t, list(t.shape), 0, -1


def _refuse(name: str, problem: str, expected: str) -> None:
    raise _core.InvalidArgumentError(f"moeckpt: tensor '{name}': {problem} (expected {expected})")


def _dispatch_of(cls: type) -> Any:
    f = cls.__torch_dispatch__
    return getattr(f, "__func__", f)


# torch.Tensor's own __torch_dispatch__: a subclass that overrides it (FakeTensor, FunctionalTensor,
# Float8/NF4 wrappers, ...) need not keep its values in its storage, so raw writes would miss them.
_PLAIN_DISPATCH = _dispatch_of(torch.Tensor)


def _check_destination(name: str, t: torch.Tensor) -> None:
    """Refuses a destination (a DTensor's local shard) the engine cannot write, naming it, before
    anything is read or written: the engine writes raw bytes into dense CPU memory, or hands pieces
    to ``copy_`` for CUDA and strided destinations."""
    if isinstance(t, torch.nn.parameter.UninitializedTensorMixin):
        _refuse(name, "is an uninitialized parameter of a lazy module",
                "a materialized tensor (run the module once, or initialize it, first)")
    if t.device.type == "meta":
        _refuse(name, "is a meta tensor: it has a shape but no storage to load into",
                "a materialized tensor, e.g. after model.to_empty(device=...)")
    if t.layout != torch.strided or t.is_nested:
        _refuse(name, f"has layout {t.layout}{' (nested)' if t.is_nested else ''}",
                "a dense (torch.strided) tensor")
    if t.device.type not in ("cpu", "cuda"):
        _refuse(name, f"is on device {t.device}", "a CPU or CUDA tensor")
    if _dispatch_of(type(t)) is not _PLAIN_DISPATCH or (t.numel() and not t.data_ptr()):
        _refuse(name, f"is a {type(t).__name__}, whose values need not be in its memory",
                "a plain tensor or nn.Parameter (a DTensor: its local shard is checked)")
    try:
        T.dtype_name(t.dtype)
    except TypeError:
        _refuse(name, f"has dtype {t.dtype}",
                "torch.bfloat16, float16, float32 or float64, or the checkpoint tensor's own dtype")
    if torch._debug_has_internal_overlap(t) == 1:
        _refuse(name, "has elements that share memory (an expand()ed or as_strided view): a load "
                "would write one element several times", "a tensor whose elements are distinct")


def _span(t: torch.Tensor) -> tuple:
    """(device, first byte, end) of the memory a strided tensor's elements occupy."""
    lo = t.data_ptr()
    extent = sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1
    return (str(t.device), lo, lo + extent * t.element_size())


def _check_no_sharing(spans: list) -> None:
    """Refuses two destinations over the same memory (tied weights, views of one buffer): their
    pieces would be written concurrently, the last one winning."""
    spans = sorted(spans)
    for (dev, lo, hi, name), (dev2, lo2, _hi2, name2) in zip(spans, spans[1:]):
        if dev == dev2 and lo2 < hi:
            _refuse(name2, f"shares memory with tensor '{name}' (tied weights?)",
                    "destinations over distinct memory: pass one of them and tie after loading")


def _writable_ranges() -> Optional[list]:
    """Sorted [start, end) of this process's writable mappings (Linux), merged; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out: list = []
    for line in lines:
        parts = line.split(None, 2)
        if len(parts) < 2 or "w" not in parts[1]:
            continue
        a, b = (int(x, 16) for x in parts[0].split("-"))
        if out and out[-1][1] == a:
            out[-1][1] = b
        else:
            out.append([a, b])
    return out


def _check_writable(hosts: list) -> None:
    """Refuses a host destination not wholly in writable memory (a read-only np.memmap or mmap
    behind torch.from_numpy / frombuffer): the engine's write would kill the process (SIGSEGV)."""
    ranges = _writable_ranges()
    if not ranges or not hosts:
        return
    starts = [r[0] for r in ranges]
    for name, lo, hi in hosts:
        i = bisect.bisect_right(starts, lo) - 1
        if i < 0 or ranges[i][1] < hi:
            _refuse(name, "is in read-only memory (e.g. a memory map opened read-only)",
                    "writable memory")


class _Staging:
    """Pieces of destinations that are not host memory, copied in as the engine delivers them: for
    CUDA through a ring of pinned host buffers with non-blocking copies (the reads of the next pieces
    overlap the transfers), elsewhere straight. Host memory stays bounded by the engine's task
    buffers plus the ring."""

    def __init__(self, slots: int = 4):
        self.targets: dict = {}  # destination index -> its flat uint8 view
        self.slots = slots
        # per CUDA device: [ring of (pinned buffer, event) or None, next slot]. One ring per device:
        # an event records on the current stream of the device current at record(), so the copy
        # and its event must both be on the destination's device (a destination on another GPU
        # than the current one used to be tracked by an event on the wrong device, its buffer
        # reused while the copy was in flight), and an event cannot move between devices.
        self.rings: dict = {}

    def add(self, index: int, t: torch.Tensor) -> None:
        self.targets[index] = t.view(-1).view(torch.uint8)

    def __call__(self, index: int, offset: int, piece: torch.Tensor) -> None:
        dst = self.targets[index][offset:offset + piece.numel()]
        if dst.device.type != "cuda":
            dst.copy_(piece)
            return
        ring = self.rings.setdefault(dst.device, [[None] * self.slots, 0])
        slots, i = ring
        with torch.cuda.device(dst.device):
            slot = slots[i]
            if slot is None or slot[0].numel() < piece.numel():
                slot = (torch.empty(max(piece.numel(), 1 << 20), dtype=torch.uint8, pin_memory=True),
                        torch.cuda.Event())
            else:
                slot[1].synchronize()  # the transfer that last used this buffer is done
            buf = slot[0][:piece.numel()]
            buf.copy_(piece)
            dst.copy_(buf, non_blocking=True)
            slot[1].record()
        slots[i] = slot
        ring[1] = (i + 1) % self.slots

    def finish(self) -> None:
        for device in self.rings:
            torch.cuda.synchronize(device)


def _agree(error: Optional[BaseException]) -> None:
    """One collective over the default process group: raises on every rank when any rank's checks
    refused the load (its own error, or the first failing rank's, of the same kind), so that either
    every rank writes or none does."""
    import torch.distributed as dist

    reports: list = [None] * dist.get_world_size()
    dist.all_gather_object(reports, None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    for rank, r in enumerate(reports):
        if r is not None:
            kind = getattr(_core, r[0], None)
            if not (isinstance(kind, type) and issubclass(kind, _core.Error)):
                kind = _core.InvalidArgumentError
            raise kind(f"moeckpt: rank {rank} refused the load, so no rank wrote anything: {r[1]}")


def _load(dests: dict, folder: str, experts: Optional[tuple[int, int, int]], dtype: torch.dtype,
          compat: Optional[str], attn_backend: str, threads: int, max_memory: int,
          stage_all: bool = False, ep: tuple[int, int] = (1, 0), *, strict: bool = False,
          fresh: bool = False, agree: bool = False) -> tuple:
    """The engine call behind load_hf_checkpoint and from_hf_dir: fills ``dests`` (name -> tensor
    or DTensor) in place. ``experts`` = (first, count, all): plain grouped-expert tensors of
    ``count`` rows hold those experts (of a plan of every expert); ``ep`` = (size, rank): the plan
    is that EP rank's (grouped destinations of its shapes). Returns (missing, unexpected, tensors,
    bytes read).

    All or nothing: every check (the destinations here; names, shapes, dtypes, rows, ``strict`` and
    the checkpoint's data in the engine's checking pass) comes before the first byte is written, so
    a refusal leaves every destination as it was. ``fresh``: the destinations hold nothing to keep
    (from_hf_dir): no checking pass. ``agree``: the ranks of a distributed load (each with its own
    rows) share the outcome of their checks before any of them writes."""
    rows, keep, staged, spans, hosts = [], [], [], [], []
    staging = _Staging()
    error = None
    try:
        # The family's expert-axis tensors (grouped experts; a stacked layout's expert biases), for
        # destinations holding one rank's experts.
        cfg = T.parse_config(os.path.join(folder, "config.json")) if experts is not None else None
        for name, t in dests.items():
            if not isinstance(t, torch.Tensor):
                continue
            _check_destination(name, t.to_local() if T.is_dtensor(t) else t)
            local, shape, row0, row1 = _local_rows(name, t, experts if cfg is not None and cfg.is_grouped_expert_key(name) else None)
            if local.numel():
                spans.append((*_span(local), name))
            target = local
            # strided, or a negative/conjugate view (raw bytes would be read back negated): through
            # a host copy of its own, written back with copy_
            if not local.is_contiguous() or local.is_neg() or local.is_conj():
                target = torch.empty(local.shape, dtype=local.dtype, device="cpu")
                staged.append((local, target))
            elif local.device.type == "cpu" and local.numel():
                hosts.append((name, *_span(local)[1:]))
            nbytes = target.numel() * target.element_size()
            if target.device.type != "cpu" or stage_all:  # pieces through the staging ring
                staging.add(len(rows), target)
                address = 0
            else:
                address = target.data_ptr()
            keep.append(target)
            rows.append((name, T.dtype_name(target.dtype), shape, row0, row1, address, nbytes))
        _check_no_sharing(spans)
        _check_writable(hosts)
    except Exception as e:  # noqa: BLE001 (shared with the other ranks below, then raised)
        if not agree:
            raise
        error = e
    args = (str(folder), rows, T.out_dtype_name(dtype), T.compat_name(compat), T.attn_backend(attn_backend),
            int(threads), int(max_memory))
    stage = staging if staging.targets else None
    with torch.no_grad():
        if agree:
            if error is None:
                try:
                    _core.load_into(*args, None, int(ep[0]), int(ep[1]), require_all=strict, phase="check")
                except BaseException as e:  # noqa: BLE001 -- Ctrl-C too: the other ranks wait in _agree
                    error = e
            _agree(error)
        phase = "write" if fresh or agree else "check+write"
        result = _core.load_into(*args, stage, int(ep[0]), int(ep[1]), require_all=strict, phase=phase)
        staging.finish()
        for dst, src in staged:
            dst.copy_(src)
        # The engine wrote behind autograd's back: what saved these tensors for backward must see
        # that they changed (as after an in-place copy_).
        for t in dests.values():
            if isinstance(t, torch.Tensor):
                torch.autograd.graph.increment_version(t.to_local() if T.is_dtensor(t) else t)
    return result


def _distributed_load(dests: dict, device_mesh: Any) -> bool:
    """Whether ranks of a process group load different rows of one model (DTensors, or an EP
    rank's experts): then one rank's refusal must stop every rank's writes."""
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    return device_mesh is not None or any(T.is_dtensor(t) for t in dests.values())


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
    converted to the destination's dtype as ``copy_`` does (float16, bfloat16, float32 and float64
    destinations; FP8, integer and other dtypes only for a checkpoint tensor of that dtype).
    CUDA and non-contiguous destinations
    are filled through pinned host buffers with non-blocking copies as the pieces are dequantized
    (host memory bounded by ``max_memory`` plus a small ring); non-contiguous destinations through a
    host copy each. With ``device_mesh``, plain
    grouped-expert tensors may hold just this EP rank's experts (Automodel's split).

    ``dtype`` is the dequantization's own dtype (``torch.bfloat16`` or ``torch.float32``); by
    default float32 when every multi-dimensional floating destination is float32, else bfloat16.
    Checkpoint tensors the model lacks are reported in ``unexpected``; a destination with no source
    is an error naming it (``strict=True``) or reported in ``missing``.

    All or nothing: a refusal (a destination without a source under ``strict``, a shape or dtype
    mismatch, a destination the engine cannot write -- meta, sparse, a tensor subclass, read-only
    or shared memory --, a bad scale or NaN code anywhere in the rows this rank loads) is raised
    before anything is written, and leaves the model as it was. The checkpoint's data is checked by
    a pass over the rank's FP8 codes and scales ahead of the writing pass (one more read of those
    bytes, no conversion, no memory beyond the same task buffers); ranks of a distributed load
    agree on the outcome before any of them writes. Ctrl-C during the checking pass leaves the
    model untouched; during the writing pass it stops at the engine's next task and the
    KeyboardInterrupt is raised once it has stopped (the destinations then hold part of the
    checkpoint), as does a failure of the machine itself (an I/O error, the files changed under
    it, a CUDA error).
    """
    start = time.perf_counter()
    dests = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    from .io import _resolve

    folder = _resolve(path, revision)
    if dtype is None:
        weights = [t.dtype for t in dests.values()
                   if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.parameter.UninitializedTensorMixin)
                   and t.dim() > 1 and t.dtype.is_floating_point]
        dtype = torch.float32 if weights and all(d == torch.float32 for d in weights) else torch.bfloat16
    experts = None
    if device_mesh is not None:
        rank, size = _mesh_rank_size(device_mesh)
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            n = T.parse_config(json.load(f)).n_routed_experts
        experts = (*_core.expert_range(n, size, rank), n)
    agree = _distributed_load(dests, device_mesh)
    missing, unexpected, n, bytes_read = _load(
        dests, folder, experts, dtype, compat, attn_backend, threads, max_memory, _stage_all,
        strict=strict, agree=agree)
    return LoadReport(list(missing), list(unexpected), int(n), int(bytes_read), time.perf_counter() - start)
