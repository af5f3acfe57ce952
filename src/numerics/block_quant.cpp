#include "moeckpt/block_quant.hpp"

#include <algorithm>
#include <cmath>

#include "moeckpt/numerics.hpp"

namespace moeckpt::numerics {

void accumulate_block_amax(std::span<const float> rows, int64_t cols, int64_t block_cols,
                           std::span<float* const> row_scale) noexcept {
  for (size_t r = 0; r < row_scale.size(); ++r) {
    const float* x = &rows[r * static_cast<size_t>(cols)];
    float* amax = row_scale[r];
    for (int64_t c = 0; c < cols; ++c)
      if (std::isfinite(x[c]))
        amax[c / block_cols] = std::max(amax[c / block_cols], std::fabs(x[c]));
  }
}

void amax_to_scales(std::span<float> scales) noexcept {
  for (auto& s : scales) s = block_scale_from_amax(s);
}

void quantize_block_rows(std::span<const float> rows, int64_t cols, int64_t block_cols,
                         std::span<float* const> row_scale, std::span<uint8_t> codes) noexcept {
  for (size_t r = 0; r < row_scale.size(); ++r) {
    const size_t at = r * static_cast<size_t>(cols);
    const float* scale = row_scale[r];
    for (int64_t c = 0; c < cols; ++c)
      codes[at + static_cast<size_t>(c)] =
          f32_to_fp8_e4m3fn_saturating(rows[at + static_cast<size_t>(c)] / scale[c / block_cols]);
  }
}

}  // namespace moeckpt::numerics
