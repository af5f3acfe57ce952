#pragma once
// Whether an HF export writes any FP8 at all: what the planner's per-tensor choice and the
// output's quantization_config both follow.
#include "moeckpt/adapter.hpp"
#include "moeckpt/model_spec.hpp"

namespace moeckpt {

// Block quantization writes the published FP8 set of an FP8 release (a BF16 release stays BF16;
// `quantize` of an HF folder makes the FP8 layout); the cast is the Automodel version's, which
// some families' adapters never do.
bool export_writes_fp8(const ModelSpec& spec, const ToHfOptions& options) noexcept;

}  // namespace moeckpt
