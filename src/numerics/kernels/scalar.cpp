// Scalar kernels: the reference every SIMD kernel must match bit for bit. Built directly on the
// codecs of moeckpt/numerics.hpp, element by element, like the executor's own loops.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "moeckpt/numerics.hpp"
#include "numerics/kernels/kernels_internal.hpp"

namespace moeckpt::kernels::detail {

uint64_t dequant_scalar(const DequantArgs& a, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  // torch widens an FP8 NaN to 0x7FF00000 | sign; our own rule keeps the decoded quiet NaN.
  const uint32_t nan_f32 = a.torch_nan ? 0x7FF00000u : 0x7FC00000u;
  uint64_t nans = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = a.src + r * a.src_ld;
    const float* scale = a.row_scale[r];
    for (int64_t c = c0; c < c1; ++c) {
      const uint8_t code = row[c];
      const float s = scale[c / a.block_cols];
      const bool nan_code = (code & 0x7Fu) == 0x7Fu;
      nans += nan_code;
      const int64_t i = a.transpose ? c * a.dst_ld + r : r * a.dst_ld + c;
      if (a.dst_f32) {
        // A NaN code is pinned explicitly: NaN * NaN-scale would otherwise depend on operand order.
        const float v = nan_code ? std::bit_cast<float>(nan_f32 | (code & 0x80u ? 0x80000000u : 0u))
                                 : numerics::fp8_e4m3fn_to_f32(code) * s;
        static_cast<float*>(a.dst)[i] = v;
      } else {
        uint16_t b = numerics::dequant_fp8_to_bf16(code, s);
        // torch's vectorized float -> bfloat16 turns every NaN into 0xFFFF.
        if (a.torch_nan && std::isnan(numerics::fp8_e4m3fn_to_f32(code) * s)) b = 0xFFFFu;
        static_cast<uint16_t*>(a.dst)[i] = b;
      }
    }
  }
  return nans;
}

void quant_scalar(const QuantArgs& a, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c) {
      const uint16_t bits = a.transpose ? a.src[c * a.src_ld + r] : a.src[r * a.src_ld + c];
      const float x = numerics::bf16_to_f32(bits);
      a.dst[r * a.dst_ld + c] =
          a.mode == QuantArgs::kTorchCast
              ? numerics::f32_to_fp8_e4m3fn_torch(x)
              : numerics::f32_to_fp8_e4m3fn_saturating(x / a.row_scale[r][c / a.block_cols]);
    }
}

void amax_scalar(const AmaxArgs& a) {
  for (int64_t r = 0; r < a.rows; ++r)
    for (int64_t c = 0; c < a.cols; ++c) {
      const uint16_t bits = a.transpose ? a.src[c * a.src_ld + r] : a.src[r * a.src_ld + c];
      const float x = numerics::bf16_to_f32(bits);
      float& m = a.amax[(r / a.block_rows) * a.amax_ld + c / a.block_cols];
      if (std::isfinite(x)) m = std::max(m, std::fabs(x));
    }
}

void amax_fold(float* amax, int32_t m) {
  // max is associative, so folding a block's largest |x| equals folding each element in turn.
  if (m >= 0) *amax = std::max(*amax, numerics::bf16_to_f32(static_cast<uint16_t>(m)));
}

void fold_column_maxima(const AmaxArgs& a, const int16_t* acc, int64_t scols, int64_t seg,
                        int64_t group) {
  for (int64_t s0 = 0; s0 < scols; s0 += seg) {
    const int64_t s1 = scols - s0 < seg ? scols : s0 + seg;
    int32_t m = -1;
    for (int64_t c = s0; c < s1; ++c) m = acc[c] > m ? acc[c] : m;
    const int64_t s = s0 / seg;
    amax_fold(a.amax + (a.transpose ? s * a.amax_ld + group : group * a.amax_ld + s), m);
  }
}

}  // namespace moeckpt::kernels::detail
