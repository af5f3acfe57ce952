"""moeckpt: MoE checkpoint conversion (MiMo-V2-Flash and its family; DeepSeek-V3 / Kimi-K2; Qwen3-MoE;
GLM-4.5; MiniMax-M2) backed by a C++ engine.

- :class:`MiMoV2FlashStateDictAdapter`, :class:`DeepSeekV3StateDictAdapter`,
  :class:`Qwen3MoeStateDictAdapter`, :class:`Glm4MoeStateDictAdapter`, :class:`MiniMaxM2StateDictAdapter`: drop-ins for NeMo Automodel's
  adapters (``from_hf``, ``to_hf``, ``convert_single_tensor_to_hf``) on ``torch.Tensor`` state dicts;
  :func:`adapter_for` picks the one a config's ``model_type`` names.
- :func:`from_hf_dir` / :func:`to_hf_dir`: checkpoint folders straight to/from native state dicts.
- :func:`dequantize_dir` / :func:`quantize_dir`: HF FP8 <-> HF BF16/F32 folders in one pass.
- :func:`consolidate_dir`: a training job's sharded save (DCP) -> HF checkpoint, FP8 optional.
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
from ._core import kernel_isa as _kernel_isa
from .adapter import (
    DeepSeekV3StateDictAdapter,
    Glm4MoeStateDictAdapter,
    MiMoV2FlashStateDictAdapter,
    MiniMaxM2StateDictAdapter,
    GPTOSSStateDictAdapter,
    Qwen3MoeStateDictAdapter,
    adapter_for,
    is_published_fp8_key,
    should_quantize_key,
)
from .io import WriteReport, consolidate_dir, dequantize_dir, from_hf_dir, quantize_dir, synth, to_hf_dir
from .load import LoadReport, load_hf_checkpoint


def kernel_isa() -> str:
    """The ISA of the engine's FP8 kernels: ``"avx512"``, ``"avx2"`` or ``"scalar"`` (the best this
    CPU runs, or the lower one ``MOECKPT_ISA`` forces). A ``MOECKPT_ISA`` naming none of them raises
    :class:`InvalidArgumentError`, as every conversion does."""
    return _kernel_isa()


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
    "DeepSeekV3StateDictAdapter",
    "Glm4MoeStateDictAdapter",
    "MiniMaxM2StateDictAdapter",
    "GPTOSSStateDictAdapter",
    "Qwen3MoeStateDictAdapter",
    "LoadReport",
    "MiMoV2FlashStateDictAdapter",
    "adapter_for",
    "WriteReport",
    "consolidate_dir",
    "dequantize_dir",
    "from_hf_dir",
    "is_published_fp8_key",
    "kernel_isa",
    "load_hf_checkpoint",
    "quantize_dir",
    "should_quantize_key",
    "synth",
    "to_hf_dir",
]
