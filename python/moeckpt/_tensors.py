"""Moving tensors between torch and the C++ engine without copies, and config handling."""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

import torch

from . import _core

# torch dtype <-> safetensors dtype name (what the engine speaks).
_TO_NAME: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
for _name in ("uint16", "uint32", "uint64"):  # present in newer torch only
    if hasattr(torch, _name):
        _TO_NAME[getattr(torch, _name)] = {"uint16": "U16", "uint32": "U32", "uint64": "U64"}[_name]
_FROM_NAME: dict[str, torch.dtype] = {v: k for k, v in _TO_NAME.items()}

Row = tuple[str, str, list[int], int, int]


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _TO_NAME[dtype]
    except KeyError:
        raise TypeError(f"moeckpt: tensors of dtype {dtype} are not supported") from None


def out_dtype_name(dtype: torch.dtype) -> str:
    if dtype not in (torch.bfloat16, torch.float32):
        raise _core.InvalidArgumentError(f"moeckpt: dequantized weights can be torch.bfloat16 or torch.float32, not {dtype}")
    return _TO_NAME[dtype]


def is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed
        return False
    return isinstance(t, DTensor)


def host_tensor(t: torch.Tensor) -> torch.Tensor:
    """The tensor as contiguous CPU memory the engine can read in place (a copy only if needed)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if not t.is_contiguous():
        t = t.contiguous()
    return t


def row(name: str, t: torch.Tensor) -> Row:
    """(name, dtype, shape, address, nbytes) of a host tensor; the caller keeps `t` alive."""
    return (name, dtype_name(t.dtype), list(t.shape), t.data_ptr(), t.numel() * t.element_size())


def rows(items: Iterable[tuple[str, torch.Tensor]], keep: list) -> list[Row]:
    items = list(items)
    # Every input is checked before any is converted, so a refusal is the same on every rank.
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"moeckpt: '{name}' is a {type(t).__name__}, expected a torch.Tensor")
        if t.device.type == "meta" or (is_dtensor(t) and t.to_local().device.type == "meta"):
            raise _core.InvalidArgumentError(f"tensor '{name}': is a meta tensor: it has a shape but no data "
                              "(expected a tensor with values, e.g. after the model is materialized)")
    out = []
    for name, t in items:
        t = host_tensor(t)
        keep.append(t)  # the engine reads this memory in place
        out.append(row(name, t))
    return out


def torch_dtype(dtype: str) -> torch.dtype:
    try:
        return _FROM_NAME[dtype]
    except KeyError:
        raise TypeError(f"moeckpt: the engine produced dtype {dtype}, which torch cannot hold") from None


def from_engine(dtype: str, shape: list[int], raw: torch.Tensor) -> torch.Tensor:
    """A typed tensor over the engine's buffer (raw: 1-D uint8 that owns it; no copy)."""
    return raw.view(torch_dtype(dtype)).reshape(shape)


def config_dict(config: Any) -> dict:
    """config.json contents from a dict, a path (file or folder) or a transformers-style object."""
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    if hasattr(config, "to_dict"):  # transformers PretrainedConfig
        return dict(config.to_dict())
    if hasattr(config, "__dict__"):  # SimpleNamespace and the like
        return {k: v for k, v in vars(config).items() if not k.startswith("_")}
    raise TypeError(f"moeckpt: config must be a dict, a path or a config object, not {type(config).__name__}")


def checkpoint_tp_size(config: Any) -> int:
    """The fused-QKV checkpoint TP degree (MiMo-V2.6) of the folder a config comes from, as Automodel
    reads it: ``metadata.tp_size`` of that folder's model.safetensors.index.json (the folder is the
    path given, or the config object's ``_name_or_path``); 1 when there is no such index or field."""
    folder = None
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        folder = path if os.path.isdir(path) else os.path.dirname(path)
    else:
        name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
        if isinstance(config, Mapping):
            name = config.get("_name_or_path")
        if isinstance(name, str) and os.path.isdir(name):
            folder = name
    index = os.path.join(folder, "model.safetensors.index.json") if folder else None
    if not index or not os.path.isfile(index):
        return 1
    with open(index, encoding="utf-8") as f:
        tp = (json.load(f).get("metadata") or {}).get("tp_size", 1)
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise _core.MalformedFileError(f"{index}: metadata.tp_size is {tp!r}, not a positive integer")
    return tp


def attn_backend(name: str) -> str:
    if name not in ("sdpa", "te"):
        raise _core.InvalidArgumentError(f"moeckpt: attn_backend must be 'sdpa' or 'te', not {name!r}")
    return name


def parse_config(config: Any) -> _core.Config:
    if isinstance(config, _core.Config):
        return config
    where = os.fspath(config) if isinstance(config, (str, os.PathLike)) else "config"
    # default=str: transformers configs may carry torch.dtype values (torch_dtype).
    text = json.dumps(config_dict(config), default=str)
    return _core.Config(text, where)


COMPAT_MODES = ("automodel", "automodel-0.6", "automodel-0.7")


def compat_name(compat: str | None) -> str:
    """The engine's name of a compat mode: "none", "automodel-0.6" or "automodel-0.7" ("automodel" is
    the newest version, 0.7)."""
    if compat in (None, "none"):
        return "none"
    if compat == "automodel":
        return "automodel-0.7"
    if compat in COMPAT_MODES:
        return compat
    raise _core.InvalidArgumentError(f"moeckpt: compat must be None, 'automodel', 'automodel-0.6' or 'automodel-0.7', not {compat!r}")


def quant_mode(quant: str) -> str:
    if quant not in ("block", "cast", "none"):
        raise _core.InvalidArgumentError(f"moeckpt: quant must be 'block', 'cast' or 'none', not {quant!r}")
    return quant


def anchored(regex: str | None) -> str | None:
    """re.match semantics (anchored at the key's start) for the engine's search."""
    return None if regex is None else f"^(?:{regex})"
