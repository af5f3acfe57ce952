#include "exec/numeric_refusals.hpp"

#include <fmt/format.h>

#include "moeckpt/error.hpp"

namespace moeckpt::exec {

std::string element_position(int64_t row, int64_t col) {
  return col < 0 ? fmt::format("[{}]", row) : fmt::format("[{}, {}]", row, col);
}

void refuse_scale_overflow(const SourceTensor& s, int64_t row, int64_t col, float value,
                           float largest, const SourceTensor& w, int64_t weight_row, float product,
                           Dtype out) {
  fail(ErrorKind::kNumeric, s.file, s.name,
       fmt::format("scale entry {} is {}: times the block's largest FP8 magnitude {} (row {} of "
                   "{}) it is {}, not finite in {}",
                   element_position(row, col), value, largest, weight_row, w.name, product,
                   dtype_name(out)),
       "scales whose dequantized weights are finite");
}

void refuse_scale(const SourceTensor& s, int64_t row, int64_t col, float value) {
  fail(ErrorKind::kNumeric, s.file, s.name,
       fmt::format("scale entry {} is {}", element_position(row, col), value),
       "a positive finite multiplier");
}

void refuse_nan(const SourceTensor& w, const std::string& position, int code) {
  fail(ErrorKind::kNumeric, w.file, w.name,
       code < 0 ? fmt::format("element {} is NaN", position)
                : fmt::format("element {} is NaN (FP8 code 0x{:02x})", position, code),
       "finite weights (the Automodel compat mode passes NaN through, as torch does)");
}

void refuse_non_finite(const SourceTensor& w, const std::string& where, const std::string& position,
                       float value) {
  fail(ErrorKind::kNumeric, w.file, w.name,
       fmt::format("{}element {} of the weight to quantize is {}", where, position, value),
       "finite values (block quantization; cast quantization reproduces torch's NaN codes)");
}

void refuse_e8m0_nan(const SourceTensor& s, int64_t row, int64_t block) {
  fail(ErrorKind::kNumeric, s.file, s.name,
       fmt::format("scale entry {} is the E8M0 NaN code 0xFF", element_position(row, block)),
       "E8M0 codes 0..254 (the Automodel compat mode reproduces torch: 2^128 = inf)");
}

void refuse_mxfp4_overflow(const SourceTensor& w, int64_t row, int64_t col, float e2m1,
                           int exponent) {
  fail(ErrorKind::kNumeric, w.file, w.name,
       fmt::format("element {} (E2M1 {} x 2^{}) overflows float32", element_position(row, col),
                   e2m1, exponent),
       "scales whose dequantized weights are finite");
}

}  // namespace moeckpt::exec
