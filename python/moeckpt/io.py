"""Checkpoint folders: read an HF folder straight into a native state dict, write one from a native
state dict, synthesize test checkpoints."""
from __future__ import annotations

import json
import os
from typing import Any, Callable, NamedTuple, Optional

import torch

from . import _core
from . import _tensors as T
from .adapter import _local_expert_shard, _mesh_rank_size, adapter_for
from .load import _load


class WriteReport(NamedTuple):
    tensors: int
    bytes: int
    shards: int


def from_hf_dir(
    path: "str | os.PathLike[str]",
    ep_rank: int = 0,
    ep_size: int = 1,
    compat: Optional[str] = None,
    dtype: torch.dtype = torch.bfloat16,
    device: "str | torch.device" = "cpu",
    *,
    device_mesh: Any = None,
    revision: Optional[str] = None,
    threads: int = 0,
    max_memory: int = 1 << 30,
    attn_backend: str = "sdpa",
) -> dict[str, Any]:
    """Reads an HF checkpoint folder (``config.json`` + safetensors shards) and returns the native
    state dict of EP rank ``ep_rank`` of ``ep_size``: what ``MiMoV2FlashStateDictAdapter.from_hf`` of
    the loaded tensors gives, without loading them into Python first. The C++ engine streams from
    the files and reads only the rank's bytes (the other ranks' experts are never read); the GIL is
    released meanwhile. With ``device_mesh`` rank and size come from its ``"ep"`` dimension and the
    grouped experts are DTensors, as from ``from_hf``. Key order: the engine's (non-expert keys by
    name, a layer's grouped experts at its first expert key). ``path`` may be a repo id such as
    ``"XiaomiMiMo/MiMo-V2-Flash"`` resolved in the local Hugging Face cache at ``revision`` (default
    ``main``); nothing is downloaded. ``attn_backend="te"`` names the sinks as Automodel's TE model
    does (``self_attn.attn_module.softmax_offset``, F32).
    """
    if device_mesh is not None:
        ep_rank, ep_size = _mesh_rank_size(device_mesh)
    if ep_size < 1 or not 0 <= ep_rank < ep_size:
        raise _core.InvalidArgumentError(f"moeckpt: ep_rank {ep_rank} is not a rank of ep_size {ep_size}")
    # Allocate, then load: the tensors are destinations of the same engine call as
    # load_hf_checkpoint (one conversion path); host memory comes pre-faulted from the engine.
    folder = _resolve(path, revision)
    layout, _metadata, config_text = _core.from_hf_layout(
        folder, int(ep_size), int(ep_rank), T.out_dtype_name(dtype), T.compat_name(compat),
        attn=T.attn_backend(attn_backend))
    device = torch.device(device)
    if device.type == "cpu":
        sizes = [_nbytes(dt, shape) for _, dt, shape in layout]
        raws = _core.host_buffers(sizes, int(threads))
        result = {name: T.from_engine(dt, shape, raw) for (name, dt, shape), raw in zip(layout, raws)}
    else:
        result = {name: torch.empty(shape, dtype=T.torch_dtype(dt), device=device) for name, dt, shape in layout}
    # The rank's own plan: only its experts need be (and are) read.
    missing, unexpected, _n, _read = _load(result, folder, None, dtype, compat, attn_backend, threads, max_memory,
                                           ep=(int(ep_size), int(ep_rank)), fresh=True)
    if missing or unexpected:  # the layout and the load plan the same outputs
        raise RuntimeError(f"moeckpt: {path}: internal: the load did not fill {missing[:3]} / filled {unexpected[:3]}")
    if device_mesh is not None:
        adapter = adapter_for(json.loads(config_text), dtype=dtype, compat=compat)
        result = {k: (adapter._as_dtensor(v, device_mesh, ep_rank, ep_size) if adapter._config.is_grouped_expert_key(k) else v)
                  for k, v in result.items()}
    return result


def _nbytes(dtype: str, shape: list[int]) -> int:
    n = T.torch_dtype(dtype).itemsize
    for d in shape:
        n *= d
    return n


def to_hf_dir(
    state_dict: dict[str, Any],
    path: "str | os.PathLike[str]",
    config: Any,
    quant: str = "block",
    compat: Optional[str] = None,
    exclude_key_regex: Optional[str] = None,
    max_shard_bytes: int = 5_000_000_000,
    *,
    ep_rank: int = 0,
    ep_size: int = 1,
    threads: int = 0,
    max_memory: int = 1 << 30,
    attn_backend: str = "sdpa",
    checkpoint_tp_size: Optional[int] = None,
    overwrite: bool = False,
    resume: bool = False,
    device_mesh: Any = None,
) -> WriteReport:
    """Writes a native state dict as an HF checkpoint folder: per-expert weights, ``quant`` =
    ``"block"`` (real ``amax / 448`` block scales), ``"cast"`` (Automodel's ones scales) or ``"none"``
    (BF16, ``quantization_config`` removed from config.json); ``compat="automodel-0.7"`` (or
    ``"automodel"``) is Automodel 0.7's ``to_hf(..., quantization=quant != "none")`` byte for byte,
    ``compat="automodel-0.6"`` Automodel 0.6's (always its cast). ``exclude_key_regex`` drops HF keys
    it matches at their start (``re.match``). The state dict may hold one EP rank's experts (DTensor
    shards, or plain tensors with ``ep_rank``/``ep_size``); the folder then holds that rank's experts.

    The same job layer as ``moeckpt to-hf``: a destination holding a checkpoint is refused unless
    ``overwrite=True``; the folder is locked while writing; shards are written under temporary names
    and renamed when complete, the index last; a manifest records finished shards, so after a kill the
    same call with ``resume=True`` keeps the verified shards and completes the folder byte-identically.
    Any error removes what the call wrote; Ctrl-C stops it at the next task, keeping the finished
    shards for ``resume=True``: the KeyboardInterrupt is raised once the engine has stopped (no
    temporary files, the folder unlocked), as the CLI exits on SIGINT. The folder's layout is decided
    by the tensor names alone, so any key order of ``state_dict`` writes the bytes ``moeckpt to-hf``
    of the same tensors writes.

    With ``device_mesh`` (called on every rank of a torch.distributed job whose grouped experts are
    DTensors sharded on the mesh's ``"ep"`` dimension, other tensors replicated), the ranks write one
    checkpoint together, byte-identical to the single-process export of the whole model: each rank
    writes the shards holding (most of) its experts, rank 0 the rest, receiving over the job's own
    process group the few experts of a shard another rank holds; rank 0 writes the index after a
    barrier. Every rank returns its own report, or raises if any rank failed (no index then;
    ``resume=True`` on every rank continues). ``overwrite`` is refused (docs/SCALING.md).
    """
    if device_mesh is not None:
        return _to_hf_dir_on_mesh(state_dict, path, config, quant, compat, exclude_key_regex, max_shard_bytes,
                                  device_mesh, threads, max_memory, attn_backend, checkpoint_tp_size, overwrite,
                                  resume)
    existing = _existing(overwrite, resume)
    compat_name = T.compat_name(compat)
    quant = T.quant_mode(quant)
    if compat_name == "automodel-0.6" and quant != "cast" and quant != "block":
        raise _core.InvalidArgumentError("moeckpt: compat='automodel-0.6' always quantizes as Automodel 0.6 does (cast); "
                         f"use compat=None or 'automodel-0.7' for quant={quant!r}")
    if compat_name != "none" and quant == "block":
        quant = "cast"  # Automodel's to_hf(quantization=True)
    adapter = adapter_for(config, ep_rank=ep_rank, ep_size=ep_size, compat=compat,
                                          attn_backend=attn_backend, checkpoint_tp_size=checkpoint_tp_size)
    items, start, require_all = adapter._native_items(state_dict)
    keep: list = []
    rows = T.rows(items, keep)
    tensors, nbytes, shards, _kept = _run_interruptible(
        lambda cancel: _core.to_hf_dir(
            rows, os.fspath(path), adapter._config, quant, compat_name, T.anchored(exclude_key_regex), None, start,
            require_all, int(max_shard_bytes), int(threads), int(max_memory), existing, cancel,
            attn=adapter.attn_backend, tp_size=adapter.checkpoint_tp_size))
    del keep
    return WriteReport(tensors, nbytes, shards)


def _to_hf_dir_on_mesh(state_dict, path, config, quant, compat, exclude_key_regex, max_shard_bytes, device_mesh,
                       threads, max_memory, attn_backend, checkpoint_tp_size, overwrite, resume) -> WriteReport:
    import torch.distributed as dist

    names = tuple(getattr(device_mesh, "mesh_dim_names", None) or ())
    if "ep" not in names:
        raise _core.InvalidArgumentError(f"moeckpt: device_mesh has dimensions {names}; a distributed export "
                                         "needs one named 'ep' (the grouped experts' shard dimension)")
    ep_dim = names.index("ep")
    group = device_mesh.get_group(ep_dim)
    workers, rank = int(device_mesh.size(ep_dim)), int(device_mesh.get_local_rank(ep_dim))
    # Other mesh dimensions hold copies: the ranks at coordinate 0 of every other one write.
    coord = device_mesh.get_coordinate() or [0] * len(names)
    writer = all(c == 0 for i, c in enumerate(coord) if i != ep_dim)
    existing = _existing(overwrite, resume)
    compat_name = T.compat_name(compat)
    quant = T.quant_mode(quant)
    if compat_name != "none" and quant == "block":
        quant = "cast"

    def agree(error: Optional[BaseException]) -> None:
        """Raises on every rank if any rank failed (its own error where it has one), so the ranks
        never part ways before a collective."""
        flag = torch.tensor([0 if error is None else 1], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        if error is not None:
            raise error
        if flag.item() != 0:
            raise _core.DestinationError(f"moeckpt: {os.fspath(path)}: another rank of the export failed; no index was "
                                         "written (the same call with resume=True on every rank continues)")

    error: Optional[BaseException] = None
    try:
        adapter = adapter_for(config, compat=compat, attn_backend=attn_backend, checkpoint_tp_size=checkpoint_tp_size)
        cfg = adapter._config
        n = cfg.n_routed_experts
        items, split, specs = [], {}, []
        for k, v in state_dict.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"moeckpt: '{k}' is a {type(v).__name__}, expected a torch.Tensor")
            if cfg.is_grouped_expert_key(k):
                if not T.is_dtensor(v) and v.shape[0] != n:
                    raise _core.InvalidArgumentError(
                        f"moeckpt: tensor '{k}': a plain tensor of {v.shape[0]} experts in a distributed export (expected a "
                        f"DTensor sharded on the 'ep' dimension, or all {n} experts)")
                if T.is_dtensor(v):
                    local, first = _local_expert_shard(v, n)
                    if first != int(_core.expert_range(n, workers, rank)[0]):
                        raise _core.InvalidArgumentError(f"moeckpt: tensor '{k}': its shard starts at expert {first}, not "
                                                         f"where EP rank {rank}/{workers} of device_mesh starts")
                    split[k] = (first, local.shape[0])
                    specs.append((k, T.dtype_name(v.dtype), list(v.shape)))
                    items.append((k, local))
                    continue
            full = v.full_tensor() if T.is_dtensor(v) else v
            specs.append((k, T.dtype_name(full.dtype), list(full.shape)))
            items.append((k, full))
        exclude = T.anchored(exclude_key_regex)
        attn, tp = adapter.attn_backend, adapter.checkpoint_tp_size
        # From names, dtypes and shapes alone: the same on every rank, so is a refusal.
        _shards, owners, needed = _core.export_plan(specs, sorted(split), cfg, quant, compat_name, exclude, None, attn,
                                                    tp or 0, int(max_shard_bytes), workers)
    except BaseException as e:  # noqa: BLE001 - every rank must learn of it
        error = e
    report = WriteReport(0, 0, 0)
    if not writer:  # a copy at another coordinate: waits for the writers, then reports the same
        if len(names) > 1:
            dist.barrier()
        if error is not None:
            raise error
        return report
    agree(error)

    # Rows a rank's shards read from another rank's experts, sent over the job's process group in one
    # order every rank follows (each transfer blocks only its two ranks: no cycle).
    local = dict(items)
    shapes = {k: shape for k, _, shape in specs}
    received: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for dst in range(workers):
        for k in sorted(needed[dst]):
            lo, hi = needed[dst][k]
            for src in range(workers):
                if src == dst:
                    continue
                first, count = _core.expert_range(n, workers, src)
                a, b = max(lo, first), min(hi, first + count)
                if b <= a:
                    continue
                if rank == src:
                    dist.send(local[k][a - first:b - first].contiguous(), dist.get_global_rank(group, dst), group=group)
                elif rank == dst:
                    buf = torch.empty((b - a, *shapes[k][1:]), dtype=local[k].dtype,
                                      device=local[k].device)
                    dist.recv(buf, dist.get_global_rank(group, src), group=group)
                    received.setdefault(k, []).append((a, buf))
    keep: list = []
    rows, windows = [], {}
    digest: Optional[str] = None
    try:
        held = []  # what this rank holds, for its digest
        for k, t in items:
            t = T.host_tensor(t)
            keep.append(t)
            held.append(T.row(k, t))
            if k in split:
                first, count = split[k]
                lo, hi = needed[rank].get(k, (first, first + count))
                pieces = [(first, t)] + received.get(k, [])
                # The rows [lo, hi) this rank's shards read, from its own experts and those received.
                parts = []
                for start, p in sorted(pieces, key=lambda x: x[0]):
                    a, b = max(lo, start), min(hi, start + p.shape[0])
                    if b > a:
                        parts.append(T.host_tensor(p[a - start:b - start]))
                if not parts:  # reads none of this tensor: its own rows stand in
                    lo, parts = first, [t]
                window = parts[0] if len(parts) == 1 else torch.cat(parts)
                keep.append(window)
                windows[k] = lo * (t.numel() // max(1, t.shape[0])) * t.element_size()
                rows.append((k, T.dtype_name(window.dtype), shapes[k], window.data_ptr(),
                             window.numel() * window.element_size()))
            else:
                rows.append(held[-1])
        digest = _core.memory_digest(held)
    except BaseException as e:  # noqa: BLE001 - every rank must learn of it
        error = e
    # The ranks' identity for resume=True: every rank's digest of what it holds.
    digests: list = [None] * workers
    dist.all_gather_object(digests, digest, group=group)
    if error is None and None in digests:
        error = _core.DestinationError(f"moeckpt: {os.fspath(path)}: another rank of the export failed; no index was "
                                       "written (the same call with resume=True on every rank continues)")
    if error is None:
        try:
            inputs_text = f"distributed export over {workers} EP ranks: " + " ".join(digests)
            tensors, nbytes, nshards, _kept = _run_interruptible(
                lambda cancel: _core.to_hf_dir_worker(
                    rows, windows, inputs_text, os.fspath(path), cfg, quant, compat_name, exclude, None,
                    int(max_shard_bytes), int(threads), int(max_memory), existing, cancel, attn, tp or 0, workers, rank,
                    owners))
            report = WriteReport(tensors, nbytes, nshards)
        except BaseException as e:  # noqa: BLE001
            error = e
    # Every rank learns whether all succeeded; only then rank 0 writes the index.
    failed = torch.tensor([1 if error is not None else 0], dtype=torch.int32)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=group)
    if error is None and failed.item() == 0 and rank == 0:
        try:
            _core.finalize_dir(os.fspath(path))
        except BaseException as e:  # noqa: BLE001
            error = e
    done = torch.tensor([1 if error is not None else 0], dtype=torch.int32)
    dist.all_reduce(done, op=dist.ReduceOp.MAX, group=group)
    if error is None and done.item() != 0:
        error = _core.DestinationError(f"moeckpt: {os.fspath(path)}: another rank of the export failed; no index "
                                       "was written (the same call with resume=True on every rank continues)")
    if len(names) > 1:
        dist.barrier()  # the ranks that did not write wait for the folder
    del keep
    if error is not None:
        raise error
    return report


def dequantize_dir(
    src: "str | os.PathLike[str]",
    dst: "str | os.PathLike[str]",
    dtype: torch.dtype = torch.bfloat16,
    *,
    revision: Optional[str] = None,
    max_shard_bytes: int = 5_000_000_000,
    threads: int = 0,
    max_memory: int = 1 << 30,
    overwrite: bool = False,
    resume: bool = False,
) -> WriteReport:
    """``moeckpt dequantize``: an HF FP8 checkpoint folder (or a repo id in the local Hugging Face
    cache) to an HF checkpoint in ``dtype`` (bfloat16 or float32) with the same keys, no ``_scale_inv``
    tensors and no ``quantization_config``; equal, tensor for tensor, to ``from_hf`` then
    ``to_hf(quantization=False)``. Streams in bounded memory through the same job layer as
    ``to_hf_dir`` (``overwrite``, ``resume``, cleanup on error, Ctrl-C)."""
    existing = _existing(overwrite, resume)
    src_dir = _resolve(src, revision)
    r = _run_interruptible(lambda cancel: _core.dequantize_dir(
        src_dir, os.fspath(dst), T.out_dtype_name(dtype), int(max_shard_bytes), int(threads), int(max_memory),
        existing, cancel))
    return WriteReport(r[0], r[1], r[2])


def quantize_dir(
    src: "str | os.PathLike[str]",
    dst: "str | os.PathLike[str]",
    quant: str = "block",
    *,
    revision: Optional[str] = None,
    max_shard_bytes: int = 5_000_000_000,
    threads: int = 0,
    max_memory: int = 1 << 30,
    overwrite: bool = False,
    resume: bool = False,
) -> WriteReport:
    """``moeckpt quantize``: an unquantized HF checkpoint folder (BF16, F16 or F32, e.g. what NeMo
    Automodel saves after fine-tuning) to the published FP8 layout: ``quant="block"`` real 128x128
    ``amax / 448`` scales (full-attention q/k/v in the published fused layout), ``"cast"`` Automodel's
    cast with ones scales. Equal, tensor for tensor, to ``from_hf`` then ``to_hf`` with that
    quantization. Same job layer as ``to_hf_dir``."""
    if quant not in ("block", "cast"):
        raise _core.InvalidArgumentError(f"moeckpt: quant must be 'block' or 'cast', not {quant!r}")
    existing = _existing(overwrite, resume)
    src_dir = _resolve(src, revision)
    r = _run_interruptible(lambda cancel: _core.quantize_dir(
        src_dir, os.fspath(dst), quant, int(max_shard_bytes), int(threads), int(max_memory), existing, cancel))
    return WriteReport(r[0], r[1], r[2])


def consolidate_dir(
    src: "str | os.PathLike[str]",
    dst: "str | os.PathLike[str]",
    *,
    quant: str = "none",
    dtype: Optional[torch.dtype] = None,
    config: "str | os.PathLike[str] | None" = None,
    max_shard_bytes: Optional[int] = None,
    threads: int = 0,
    max_memory: int = 1 << 30,
    overwrite: bool = False,
    resume: bool = False,
) -> WriteReport:
    """``moeckpt consolidate``: a training job's sharded save (PyTorch DCP's Hugging Face writer with
    distributed saving, torch's or NeMo Automodel's: ``shard-RRRRR-model-IIIII-of-NNNNN.safetensors``,
    a checkpoint's ``model/`` or torchtitan's ``sharded/``) to the HF checkpoint its consolidation
    is: every tensor assembled from its pieces (refused, before any output exists, on a gap, an
    overlap, mixed dtypes or files of two saves), in its HF dtype (Automodel's
    ``.hf_metadata/fqn_to_dtype_mapping.json``), in the files the save's mapping or file names give
    (``max_shard_bytes``: shards of that size instead). ``dtype``: Automodel's cast (bfloat16,
    float16 or float32; tensors mapped to float32 and non-float tensors are kept). ``quant="block"``
    or ``"cast"``: FP8 in the same pass, equal to :func:`quantize_dir` of the consolidated folder.
    ``config``: the model's config.json when the save has no ``.hf_metadata/config.json``. Same job
    layer as ``to_hf_dir`` (``overwrite``, ``resume``, cleanup on error, Ctrl-C)."""
    if quant not in ("none", "block", "cast"):
        raise _core.InvalidArgumentError(f"moeckpt: quant must be 'none', 'block' or 'cast', not {quant!r}")
    names = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
    if dtype is not None and dtype not in names:
        raise _core.InvalidArgumentError(
            f"moeckpt: dtype must be torch.bfloat16, torch.float16 or torch.float32, not {dtype!r}")
    if max_shard_bytes is not None and int(max_shard_bytes) < 1:
        raise _core.InvalidArgumentError(f"moeckpt: max_shard_bytes must be positive, not {max_shard_bytes!r}")
    existing = _existing(overwrite, resume)
    r = _run_interruptible(lambda cancel: _core.consolidate_dir(
        os.fspath(src), os.fspath(dst), quant, names[dtype] if dtype is not None else None,
        os.fspath(config) if config is not None else None, int(max_shard_bytes or 0), int(threads),
        int(max_memory), existing, cancel))
    return WriteReport(r[0], r[1], r[2])


def _existing(overwrite: bool, resume: bool) -> str:
    if overwrite and resume:
        raise _core.InvalidArgumentError("moeckpt: overwrite and resume exclude each other")
    return "overwrite" if overwrite else "resume" if resume else "refuse"


def _resolve(src: "str | os.PathLike[str]", revision: Optional[str]) -> str:
    return _core.resolve_checkpoint(os.fspath(src), revision)


def _run_interruptible(call: Callable[[Any], Any]) -> Any:
    """Runs an engine folder conversion with a stop request (``_core.CancelFlag``). The binding runs
    the engine on a helper thread and checks for signals on the calling one (run_interruptible in
    python/src/core.cpp): on Ctrl-C it sets the request, waits until the engine has stopped at its
    next task (temporary files removed, the folder's lock released, finished shards kept for
    ``resume=True``) and only then raises the KeyboardInterrupt. Waiting here in ``Thread.join``
    instead cannot: on Python 3.11/3.12 a join interrupted by KeyboardInterrupt marks the still
    running thread as stopped, so the join after ``cancel.set()`` returned at once."""
    return call(_core.CancelFlag())


def synth(
    dst: "str | os.PathLike[str]",
    preset: str = "tiny",
    *,
    seed: int = 0,
    layers: Optional[int] = None,
    experts: Optional[int] = None,
    vocab: Optional[int] = None,
    mtp: Optional[int] = None,
    shard_size: Optional[int] = None,
    tp_size: Optional[int] = None,
    sparse: bool = False,
) -> WriteReport:
    """Writes a synthetic FP8 checkpoint of a model family's layout (``moeckpt synth``): ``preset``
    ``"tiny"`` (MiMo-V2-Flash, hidden 256, 4 layers, 8 experts, 257 tensors), ``"full"`` (its real
    dimensions, trimmed by the options), the other layouts of the family (``"v26-tiny"``, ...), or
    the DeepSeek-V3 format (``"deepseek-v3-tiny"``, ``"deepseek-v3-tiny-q-proj"``,
    ``"deepseek-v3-micro"``, ``"deepseek-v3-full"``, ``"kimi-k2-full"``); an unknown name is refused,
    listing them. ``tp_size`` is the TP degree a fused ``qkv_proj`` is interleaved over (the
    MiMo-V2.6 presets; default 4; refused for a preset that takes none), ``sparse=True`` writes the
    real size and layout as sparse files (FP8 codes and large weights are holes, scales and small
    tensors real: plans and I/O tests of full-size checkpoints; split-QKV presets only). The files
    are those ``moeckpt synth`` writes with the same options, byte for byte. Deterministic for a
    seed."""
    return WriteReport(*_core.synth(os.fspath(dst), preset, layers, experts, vocab, mtp, int(seed), shard_size,
                                    tp_size, bool(sparse)))
