#pragma once
// Block FP8 quantization of float rows on shared scales: the one routine the executor's scalar
// paths and synth use (the BF16 SIMD kernels implement the same arithmetic). A row's block scales
// are a scale row of ceil(cols / block_cols) floats; several rows, of one matrix or of several
// (q/k/v sharing a fused layout's scales), may use the same scale row.
//
//   1. accumulate_block_amax over every row that shares the scales (scale rows start at 0),
//   2. amax_to_scales (amax / 448; FLT_MIN for an all-zero block: block_scale_from_amax),
//   3. quantize_block_rows (x / scale, rounded to nearest even, saturated at +-448).
#include <cstdint>
#include <span>

namespace moeckpt::numerics {

// Raises each block's entry of the row's scale row to the row's largest finite magnitude in the
// block. `rows` is row-major with `cols` columns; `row_scale[r]` is row r's scale row.
void accumulate_block_amax(std::span<const float> rows, int64_t cols, int64_t block_cols,
                           std::span<float* const> row_scale) noexcept;
void amax_to_scales(std::span<float> scales) noexcept;
// The same row-to-scale-row map as accumulate_block_amax; the scales are only read.
void quantize_block_rows(std::span<const float> rows, int64_t cols, int64_t block_cols,
                         std::span<float* const> row_scale, std::span<uint8_t> codes) noexcept;

}  // namespace moeckpt::numerics
