#pragma once
// Exact scalar codecs for OCP MXFP4 (MX v1.0): E2M1 elements (4 bits, values 0, 0.5, 1, 1.5, 2,
// 3, 4, 6 and their negatives) sharing one E8M0 scale (2^(code-127), 0xFF NaN) per block of 32
// along the input axis. Packed two per byte, the earlier element in the low nibble.
#include <cstdint>
#include <span>

namespace moeckpt::numerics {

inline constexpr int64_t kMxBlock = 32;
inline constexpr uint8_t kE8m0Nan = 0xFF;
inline constexpr float kE2m1Max = 6.0f;

// E2M1 code (low 4 bits; bit 3 is the sign) -> float32, exact. 0x8 is -0.
float e2m1_to_f32(uint8_t code) noexcept;

// float32 -> E2M1 code, round to nearest even (ties go to the even code), saturating at +-6;
// the sign is kept (a negative value that rounds to zero gives 0x8). NaN gives 0x0: callers
// refuse NaN before quantizing.
uint8_t f32_to_e2m1_saturating(float x) noexcept;

// E8M0 code -> 2^(code - 127) as float32 (exact: 2^-127 is a float32 subnormal); 0xFF is NaN.
float e8m0_to_f32(uint8_t code) noexcept;

// The shared scale of a block whose largest magnitude is `amax`, by the MX v1.0 rule:
// 2^(floor(log2(amax)) - 2) (2 = the largest E2M1 exponent), as an E8M0 code clamped to
// [0, 254]; a zero block gets the smallest scale (code 0). +-inf/NaN amax give 254.
uint8_t mx_scale_code_from_amax(float amax) noexcept;

// Quantizes one block (at most kMxBlock values, an even count) into packed E2M1 bytes
// (values.size() / 2 of them) and returns its E8M0 scale code.
uint8_t quantize_mxfp4_block(std::span<const float> values, std::span<uint8_t> packed) noexcept;

// One element's dequantization: e2m1 * 2^(scale - 127) in float32 (exact whenever finite;
// 6 * 2^127 overflows to inf, which callers refuse outside the compat modes).
float dequant_mxfp4(uint8_t code, uint8_t scale) noexcept;

}  // namespace moeckpt::numerics
