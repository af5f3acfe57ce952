"""Checkpoint folders: read an HF folder straight into a native state dict, write one from a native
state dict, synthesize test checkpoints."""
from __future__ import annotations

import json
import os
import threading
from typing import Any, Callable, NamedTuple, Optional

import torch

from . import _core
from . import _tensors as T
from .adapter import _mesh_rank_size, adapter_for
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
                                           ep=(int(ep_size), int(ep_rank)))
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
    Any error removes what the call wrote; KeyboardInterrupt stops it at the next task, keeping the
    finished shards for ``resume=True``.
    """
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


def _existing(overwrite: bool, resume: bool) -> str:
    if overwrite and resume:
        raise _core.InvalidArgumentError("moeckpt: overwrite and resume exclude each other")
    return "overwrite" if overwrite else "resume" if resume else "refuse"


def _resolve(src: "str | os.PathLike[str]", revision: Optional[str]) -> str:
    return _core.resolve_checkpoint(os.fspath(src), revision)


def _run_interruptible(call: Callable[[Any], Any]) -> Any:
    """Runs an engine folder conversion on a helper thread while this thread waits, so that Ctrl-C
    (KeyboardInterrupt, raised only here) can ask the engine to stop at its next task: temporary files
    are removed, finished shards kept for ``resume=True``, and the interrupt is raised again."""
    cancel = _core.CancelFlag()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = call(cancel)
        except BaseException as e:  # handed to the waiting thread
            box["error"] = e

    th = threading.Thread(target=work, name="moeckpt-engine", daemon=True)
    th.start()
    try:
        while th.is_alive():
            th.join(0.1)
    except BaseException:
        cancel.set()
        th.join()
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]


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
) -> WriteReport:
    """Writes a synthetic FP8 checkpoint of a model family's layout (``moeckpt synth``): ``preset``
    ``"tiny"`` (MiMo-V2-Flash, hidden 256, 4 layers, 8 experts, 257 tensors), ``"full"`` (its real
    dimensions, trimmed by the options), the other layouts of the family (``"v26-tiny"``, ...), or
    the DeepSeek-V3 format (``"deepseek-v3-tiny"``, ``"deepseek-v3-tiny-q-proj"``,
    ``"deepseek-v3-full"``, ``"kimi-k2-full"``); an unknown name is refused, listing them.
    Deterministic for a seed."""
    return WriteReport(*_core.synth(os.fspath(dst), preset, layers, experts, vocab, mtp, int(seed), shard_size))
