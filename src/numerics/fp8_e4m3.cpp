// FP8 E4M3FN codecs, the FP8 -> BF16 dequantization of one element and the block scale rule.
// Bit-level integer code wherever possible so results do not depend on compiler flags.
#include <bit>
#include <cfloat>
#include <cstdint>

#include "moeckpt/numerics.hpp"

#if defined(__FAST_MATH__)
#error "numerics must be exact IEEE float32; do not build it with -ffast-math"
#endif

namespace moeckpt::numerics {
namespace {

constexpr uint32_t kSignMask = 0x80000000u;
// 480.0f: where E4M3 would place a code 0x7F if it were not NaN. torch only tests against this
// bound; everything in (464, 480) reaches 0x7F through rounding instead.
constexpr uint32_t kTorchNanBound = 0x43F00000u;
constexpr uint32_t k448Bits = 0x43E00000u;
constexpr uint32_t kMinNormalBits = 121u << 23;  // 2^-6, the smallest normal E4M3 value
// 2^14: its float ulp is 2^-9, the E4M3 subnormal step, so adding it rounds to that grid.
constexpr uint32_t kDenormMagicBits = 141u << 23;

constexpr float decode_bits(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  const uint32_t e = (code >> 3) & 0xFu;
  const uint32_t m = code & 0x7u;
  if (e == 0xFu && m == 0x7u) return std::bit_cast<float>(sign | 0x7FC00000u);
  if (e == 0) {
    const float mag = static_cast<float>(m) * 0x1p-9f;  // exact: m < 8
    return sign ? -mag : mag;
  }
  // Normal: rebias the exponent from 7 to 127 and put the 3 mantissa bits on top of float's 23.
  return std::bit_cast<float>(sign | ((e + 120u) << 23) | (m << 20));
}

struct DecodeTable {
  float v[256];
};

constexpr DecodeTable make_decode_table() {
  DecodeTable t{};
  for (int c = 0; c < 256; ++c) t.v[c] = decode_bits(static_cast<uint8_t>(c));
  return t;
}

constexpr DecodeTable kDecode = make_decode_table();

// Round-to-nearest-even of a non-negative float (given by its bits) that is below 480.0f. Returns
// the 7-bit magnitude code; 0x7F (NaN) when the value rounds up past 448.
uint8_t encode_magnitude_rne(uint32_t abs_bits) {
  if (abs_bits < kMinNormalBits) {
    // The float adder does the rounding to a multiple of 2^-9 (ties to even); the quotient is then
    // in the low mantissa bits of the sum.
    const float sum = std::bit_cast<float>(abs_bits) + std::bit_cast<float>(kDenormMagicBits);
    return static_cast<uint8_t>(std::bit_cast<uint32_t>(sum) - kDenormMagicBits);
  }
  const uint32_t odd = (abs_bits >> 20) & 1u;
  // Rebias 127 -> 7 (wraps in unsigned arithmetic on purpose), then round the 20 dropped bits:
  // adding 0x7FFFF carries only above half, and the extra odd bit makes an exact half carry only
  // when the kept mantissa is odd.
  const uint32_t rebased = abs_bits - (120u << 23) + 0x7FFFFu + odd;
  return static_cast<uint8_t>(rebased >> 20);
}

}  // namespace

float fp8_e4m3fn_to_f32(uint8_t code) noexcept {
  return kDecode.v[code];
}

uint8_t f32_to_fp8_e4m3fn_torch(float x) noexcept {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint32_t abs_bits = bits & ~kSignMask;
  const uint8_t sign = static_cast<uint8_t>(bits >> 24) & 0x80u;
  // Includes +-inf and every NaN (their magnitude bits are above any finite float's).
  if (abs_bits >= kTorchNanBound) return static_cast<uint8_t>(0x7Fu | sign);
  return static_cast<uint8_t>(encode_magnitude_rne(abs_bits) | sign);
}

uint8_t f32_to_fp8_e4m3fn_saturating(float x) noexcept {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint32_t abs_bits = bits & ~kSignMask;
  const uint8_t sign = static_cast<uint8_t>(bits >> 24) & 0x80u;
  if (abs_bits > 0x7F800000u) return static_cast<uint8_t>(0x7Fu | sign);  // NaN
  if (abs_bits > k448Bits) return static_cast<uint8_t>(0x7Eu | sign);     // incl. inf
  return static_cast<uint8_t>(encode_magnitude_rne(abs_bits) | sign);
}

uint16_t dequant_fp8_to_bf16(uint8_t code, float scale) noexcept {
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
  // One float32 multiply whose result only feeds integer code: nothing to contract into an FMA,
  // and float expressions are evaluated in float.
  const float product = fp8_e4m3fn_to_f32(code) * scale;
#else
  // Targets that evaluate float in wider precision (x87): the volatile store rounds to float32.
  volatile float product = fp8_e4m3fn_to_f32(code) * scale;
#endif
  return f32_to_bf16_rne(product);
}

float block_scale_from_amax(float amax) noexcept {
  const float scale = amax / kFp8E4m3Max;
  // The negated comparison also catches NaN; a subnormal scale would lose precision and flush to
  // zero under FTZ, so it is treated like a zero block.
  if (!(scale >= FLT_MIN)) return FLT_MIN;
  return scale;
}

}  // namespace moeckpt::numerics
