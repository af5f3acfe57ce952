#pragma once
// The numeric refusals, one definition each, used wherever the condition is met: by the
// executor's transforms while converting, and by the planners' and validation's pre-scans before
// any output exists. Each throws a kNumeric moeckpt::Error naming the file and the tensor.
#include <cstdint>
#include <string>

#include "moeckpt/tensor_source.hpp"

namespace moeckpt::exec {

// "[r, c]" (or "[i]") for messages.
std::string element_position(int64_t row, int64_t col = -1);

// A block scale multiplies its block: it must be positive and finite.
inline bool is_usable_scale(float v) noexcept {
  return v > 0 && v <= 3.4028234663852886e38f;
}
[[noreturn]] void refuse_scale(const SourceTensor& scale, int64_t row, int64_t col, float value);
// A finite scale whose product with the largest code of its block (in `weight_row`) is not
// finite in the output dtype.
[[noreturn]] void refuse_scale_overflow(const SourceTensor& scale, int64_t row, int64_t col,
                                        float value, float largest, const SourceTensor& weight,
                                        int64_t weight_row, float product, Dtype out);
// A NaN in a weight to dequantize: an FP8 NaN code (0x7F / 0xFF), or `code` < 0 for a NaN of
// another dtype (the compat mode passes it through).
[[noreturn]] void refuse_nan(const SourceTensor& weight, const std::string& position, int code);
// NaN or infinity in a weight to block-quantize; `where`: e.g. "slot 3 " before the position.
[[noreturn]] void refuse_non_finite(const SourceTensor& weight, const std::string& where,
                                    const std::string& position, float value);
// The E8M0 NaN code 0xFF as an MXFP4 block scale, and a dequantized MXFP4 element that
// overflows float32.
[[noreturn]] void refuse_e8m0_nan(const SourceTensor& scale, int64_t row, int64_t block);
[[noreturn]] void refuse_mxfp4_overflow(const SourceTensor& weight, int64_t row, int64_t col,
                                        float e2m1, int exponent);

}  // namespace moeckpt::exec
