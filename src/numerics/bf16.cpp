// BF16 and F16 scalar conversions, all on the bit patterns (exact, independent of FP flags).
#include <bit>
#include <cstdint>

#include "moeckpt/numerics.hpp"

namespace moeckpt::numerics {

uint16_t f32_to_bf16_rne(float x) noexcept {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  // torch's scalar c10::BFloat16 rule: one canonical quiet NaN whatever the sign or payload
  // (rounding a NaN's bits could otherwise carry it into infinity).
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
  // Ties to even: 0x7FFF carries only above half, plus 1 at an exact half when the kept LSB is
  // odd. A carry out of the mantissa correctly bumps the exponent, up to infinity.
  const uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

float bf16_to_f32(uint16_t bits) noexcept {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

float f16_to_f32(uint16_t h) noexcept {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1Fu;
  uint32_t m = h & 0x3FFu;
  if (e == 0x1Fu) return std::bit_cast<float>(sign | 0x7F800000u | (m << 13));  // inf, NaN payload
  if (e == 0) {
    if (m == 0) return std::bit_cast<float>(sign);
    // Subnormal m * 2^-24: shift the leading one up to the implicit bit, lowering the exponent.
    int exp = 113;  // float exponent field of 2^-14, the half subnormal scale
    while ((m & 0x400u) == 0) {
      m <<= 1;
      --exp;
    }
    return std::bit_cast<float>(sign | (static_cast<uint32_t>(exp) << 23) | ((m & 0x3FFu) << 13));
  }
  return std::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
}

}  // namespace moeckpt::numerics
