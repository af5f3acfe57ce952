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

uint16_t f32_to_f16_rne(float x) noexcept {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t a = bits & 0x7FFFFFFFu;
  // NaN: quiet, sign and the top 10 payload bits kept (torch's copy_, as F16C's vcvtps2ph).
  if (a > 0x7F800000u) return sign | 0x7E00u | static_cast<uint16_t>((a & 0x7FFFFFu) >> 13);
  if (a >= 0x47800000u) return sign | 0x7C00u;  // 65536 and above, inf (65520.. rounds up below)
  if (a >= 0x38800000u) {                       // the F16 normal range, 2^-14 and above
    // Rebias the exponent (127 -> 15) in place, then ties to even on the 13 dropped bits; a carry
    // out of the mantissa bumps the exponent, up to infinity (0x7C00) from 65520 on.
    const uint32_t m = a - 0x38000000u;
    return sign | static_cast<uint16_t>((m + 0xFFFu + ((m >> 13) & 1u)) >> 13);
  }
  if (a <= 0x33000000u) return sign;  // up to 2^-25: zero (2^-25 itself ties to the even zero)
  // F16 subnormal: the value in units of 2^-24 rounded to nearest even (reaching 0x400, the
  // smallest normal, is that value's correct encoding).
  const uint32_t shift = 126u - (a >> 23);  // 14..24
  const uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;
  uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return sign | static_cast<uint16_t>(q);
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
