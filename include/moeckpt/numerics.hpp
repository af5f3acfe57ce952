#pragma once
// Exact scalar codecs for FP8 E4M3FN, BF16 and F16. These are the reference every kernel is
// tested against; see docs/CONTRACT.md ("FP8 E4M3FN").
#include <cstdint>

namespace moeckpt::numerics {

inline constexpr float kFp8E4m3Max = 448.0f;

// E4M3FN code -> float32 (exact). 0x7F/0xFF are NaN (sign kept), 0x80 is -0.
float fp8_e4m3fn_to_f32(uint8_t code) noexcept;

// float32 -> E4M3FN, round to nearest even, saturating: |x| > 448 (and +-inf) -> +-448,
// NaN -> 0x7F (0xFF for a negative NaN). Never yields a NaN code for finite or infinite input.
uint8_t f32_to_fp8_e4m3fn_saturating(float x) noexcept;

// float32 -> E4M3FN exactly as torch 2.11's `tensor.to(torch.float8_e4m3fn)` on CPU: round to
// nearest even, no saturation: |x| > 464 (464 itself ties to 448), +-inf and NaN become 0x7F |
// sign.
uint8_t f32_to_fp8_e4m3fn_torch(float x) noexcept;

// float32 -> BF16 bits, round to nearest even; every NaN becomes 0x7FC0 (torch's scalar rule).
uint16_t f32_to_bf16_rne(float x) noexcept;

// float32 -> F16 bits exactly as torch's CPU copy_ (and x86 F16C): round to nearest even, overflow
// to +-inf (65520 and above), subnormals rounded to nearest even; a NaN stays a quiet NaN with its
// sign and the top 10 bits of its payload (sign | 0x7E00 | mantissa >> 13).
uint16_t f32_to_f16_rne(float x) noexcept;

float bf16_to_f32(uint16_t bits) noexcept;
float f16_to_f32(uint16_t bits) noexcept;

// The dequantization of one FP8 element: bf16_rne(float(fp8) * scale), one IEEE float32 multiply.
uint16_t dequant_fp8_to_bf16(uint8_t code, float scale) noexcept;

// Scale of a block whose largest magnitude is `amax`: amax / 448 as float32. A block of zeros (or
// an amax so small the quotient underflows) gets the smallest positive normal float instead, so a
// scale is never 0, negative or NaN.
float block_scale_from_amax(float amax) noexcept;

}  // namespace moeckpt::numerics
