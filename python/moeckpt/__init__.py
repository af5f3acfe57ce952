"""moeckpt: MiMo-V2-Flash MoE checkpoint conversion backed by a C++ engine.

- :class:`MiMoV2FlashStateDictAdapter`: a drop-in for NeMo Automodel's adapter (``from_hf``, ``to_hf``,
  ``convert_single_tensor_to_hf``) on ``torch.Tensor`` state dicts.
- :func:`from_hf_dir` / :func:`to_hf_dir`: checkpoint folders straight to/from native state dicts.
- :func:`dequantize_dir` / :func:`quantize_dir`: HF FP8 <-> HF BF16/F32 folders in one pass.
- :class:`Error`: every refusal of the engine, with its one-line message (file, tensor, problem,
  expectation), raised as the subclass of its kind (``kind`` names it): :class:`MalformedFileError`,
  :class:`ConfigMismatchError`, :class:`UnsupportedLayoutError`, :class:`NumericError`
  (NaN, bad scales), :class:`InvalidArgumentError` (also ``ValueError``), :class:`DestinationError`,
  :class:`InputIOError` (also ``OSError``) and :class:`ConversionInterrupted`.
"""
from __future__ import annotations

import torch as _torch  # noqa: F401  (the extension hands out torch tensors)

from ._core import (
    ConfigMismatchError,
    ConversionInterrupted,
    DestinationError,
    Error,
    InputIOError,
    InvalidArgumentError,
    MalformedFileError,
    NumericError,
    UnsupportedLayoutError,
)
from .adapter import MiMoV2FlashStateDictAdapter, is_published_fp8_key, should_quantize_key
from .io import WriteReport, dequantize_dir, from_hf_dir, quantize_dir, synth, to_hf_dir
from .load import LoadReport, load_hf_checkpoint

__version__ = "0.1.0"

__all__ = [
    "ConfigMismatchError",
    "ConversionInterrupted",
    "DestinationError",
    "Error",
    "InputIOError",
    "InvalidArgumentError",
    "MalformedFileError",
    "NumericError",
    "UnsupportedLayoutError",
    "LoadReport",
    "MiMoV2FlashStateDictAdapter",
    "WriteReport",
    "dequantize_dir",
    "from_hf_dir",
    "is_published_fp8_key",
    "load_hf_checkpoint",
    "quantize_dir",
    "should_quantize_key",
    "synth",
    "to_hf_dir",
]
