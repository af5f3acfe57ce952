#include "moeckpt/mxfp4.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace moeckpt::numerics {
namespace {

constexpr float kMagnitudes[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

// The code of x: the magnitude as a count of the midpoints below |x| (a tie goes to the even code:
// the lower one for 0.25, 1.25, 2.5 and 5, the upper one for 0.75, 1.75 and 3.5; inf counts all
// seven: 6, saturating), the sign kept; NaN 0x0. No branches, so that a block's loop vectorizes.
inline uint8_t e2m1_code(float x) noexcept {
  const float a = std::fabs(x);
  const int m = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) + (a >= 3.5f) +
                (a > 5.0f);
  const int code = m | (std::signbit(x) ? 0x8 : 0x0);
  return static_cast<uint8_t>(x != x ? 0 : code);
}

}  // namespace

float e2m1_to_f32(uint8_t code) noexcept {
  const float m = kMagnitudes[code & 0x7];
  return (code & 0x8) ? -m : m;
}

uint8_t f32_to_e2m1_saturating(float x) noexcept {
  return e2m1_code(x);
}

float e8m0_to_f32(uint8_t code) noexcept {
  if (code == kE8m0Nan) return std::numeric_limits<float>::quiet_NaN();
  return std::ldexp(1.0f, static_cast<int>(code) - 127);
}

uint8_t mx_scale_code_from_amax(float amax) noexcept {
  if (!(amax > 0.0f)) return 0;  // zero block (and NaN: refused by callers before this)
  if (std::isinf(amax)) return 254;
  const int e = std::ilogb(amax) - 2;  // floor(log2(amax)), exact for subnormals too
  return static_cast<uint8_t>(std::clamp(e, -127, 127) + 127);
}

uint8_t quantize_mxfp4_block(std::span<const float> values, std::span<uint8_t> packed) noexcept {
  float amax = 0.0f;
  for (float v : values) amax = std::max(amax, std::fabs(v));
  const uint8_t scale = mx_scale_code_from_amax(amax);
  // x / 2^(scale-127) as one multiply by 2^(127-scale), a float32 for every code (2^-127 is a
  // subnormal, 2^127 normal): the product is rounded once, as ldexp would round it.
  const float inv = std::ldexp(1.0f, 127 - static_cast<int>(scale));
  for (size_t i = 0; i + 1 < values.size(); i += 2) {
    const uint8_t lo = e2m1_code(values[i] * inv);
    const uint8_t hi = e2m1_code(values[i + 1] * inv);
    packed[i / 2] = static_cast<uint8_t>(lo | (hi << 4));
  }
  return scale;
}

float dequant_mxfp4(uint8_t code, uint8_t scale) noexcept {
  return e2m1_to_f32(code) * e8m0_to_f32(scale);
}

}  // namespace moeckpt::numerics
