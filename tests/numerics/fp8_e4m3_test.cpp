// FP8 E4M3FN codecs, dequantization and block scales against references written from the format's
// definition (ldexp on the fields, nearest-value search over the whole code table), never against
// the bit tricks used in src/numerics.
#include <gtest/gtest.h>

#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "moeckpt/numerics.hpp"

namespace moeckpt::numerics {
namespace {

bool is_nan_code(int code) {
  return (code & 0x7F) == 0x7F;
}

// Value of a non-NaN code straight from the definition: s eeee mmm, bias 7, subnormal m * 2^-9.
double ref_decode(int code) {
  const int s = (code >> 7) & 1;
  const int e = (code >> 3) & 0xF;
  const int m = code & 0x7;
  const double mag = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 7 - 3);
  return s ? -mag : mag;
}

uint32_t fbits(float x) {
  return std::bit_cast<uint32_t>(x);
}

// Engines' result_type is wider than 32 bits on LP64; bit patterns need exactly 32.
template <typename Engine>
uint32_t u32(Engine& rng) {
  return static_cast<uint32_t>(rng());
}

// Magnitudes of codes 0x00..0x7E, plus 480 at index 0x7F: the value the code 0x7F would have if it
// were not NaN; torch's rounding can land there, and then yields NaN.
struct MagnitudeTable {
  double v[128];
  MagnitudeTable() {
    for (int c = 0; c < 0x7F; ++c) v[c] = ref_decode(c);
    v[0x7F] = 480.0;
  }
};
const MagnitudeTable kMags;

// Nearest code (by magnitude) to ax >= 0, searching every candidate; a tie goes to the code whose
// mantissa LSB is 0 (round half to even).
int ref_nearest_magnitude(double ax, bool include_480) {
  const int n = include_480 ? 128 : 127;
  // Beyond the largest candidate it is the nearest; testing this first avoids comparing two huge
  // distances that double rounding could make equal (near the candidates the distances are exact).
  if (ax >= kMags.v[n - 1]) return n - 1;
  int best = 0;
  double best_d = std::fabs(ax - kMags.v[0]);
  for (int c = 1; c < n; ++c) {
    const double d = std::fabs(ax - kMags.v[c]);
    if (d < best_d || (d == best_d && (c & 1) == 0)) {
      best = c;
      best_d = d;
    }
  }
  return best;
}

uint8_t ref_saturating(float x) {
  const int sign = std::signbit(x) ? 0x80 : 0;
  if (std::isnan(x)) return static_cast<uint8_t>(0x7F | sign);
  const double ax = std::fabs(static_cast<double>(x));
  if (ax > 448.0) return static_cast<uint8_t>(0x7E | sign);
  return static_cast<uint8_t>(ref_nearest_magnitude(ax, false) | sign);
}

// torch 2.11 CPU cast: plain round-to-nearest-even with no saturation; whatever rounds beyond 448
// (|x| > 464; 464 itself ties to 448 whose mantissa is even) becomes NaN, as do inf and NaN.
uint8_t ref_torch(float x) {
  const int sign = std::signbit(x) ? 0x80 : 0;
  if (std::isnan(x) || std::isinf(x)) return static_cast<uint8_t>(0x7F | sign);
  const double ax = std::fabs(static_cast<double>(x));
  return static_cast<uint8_t>(ref_nearest_magnitude(ax, true) | sign);
}

std::string describe(float x) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "x=%a (bits 0x%08X)", static_cast<double>(x), fbits(x));
  return buf;
}

// Compares both encoders with the references on every input; reports the first few mismatches.
void check_encoders(const std::vector<float>& xs) {
  int failures = 0;
  for (float x : xs) {
    const uint8_t want_sat = ref_saturating(x);
    const uint8_t got_sat = f32_to_fp8_e4m3fn_saturating(x);
    const uint8_t want_torch = ref_torch(x);
    const uint8_t got_torch = f32_to_fp8_e4m3fn_torch(x);
    if (want_sat != got_sat || want_torch != got_torch) {
      if (++failures <= 10) {
        ADD_FAILURE() << describe(x) << ": saturating got 0x" << std::hex << int{got_sat}
                      << " want 0x" << int{want_sat} << ", torch got 0x" << int{got_torch}
                      << " want 0x" << int{want_torch};
      }
    }
  }
  EXPECT_EQ(failures, 0) << "of " << xs.size() << " inputs";
}

TEST(Fp8E4m3Decode, AllCodesMatchFieldDefinition) {
  for (int code = 0; code < 256; ++code) {
    const float got = fp8_e4m3fn_to_f32(static_cast<uint8_t>(code));
    if (is_nan_code(code)) {
      EXPECT_TRUE(std::isnan(got)) << code;
      EXPECT_EQ(std::signbit(got), code >= 0x80) << code;
      continue;
    }
    EXPECT_FALSE(std::isnan(got)) << code;
    // Every E4M3 value is exact in float32; compare bits so -0 and +0 differ.
    EXPECT_EQ(fbits(got), fbits(static_cast<float>(ref_decode(code)))) << "code " << code;
  }
}

TEST(Fp8E4m3Decode, Landmarks) {
  int nan_codes = 0;
  for (int code = 0; code < 256; ++code) {
    nan_codes += std::isnan(fp8_e4m3fn_to_f32(static_cast<uint8_t>(code))) ? 1 : 0;
  }
  EXPECT_EQ(nan_codes, 2);
  EXPECT_TRUE(std::isnan(fp8_e4m3fn_to_f32(0x7F)));
  EXPECT_TRUE(std::isnan(fp8_e4m3fn_to_f32(0xFF)));
  EXPECT_EQ(fbits(fp8_e4m3fn_to_f32(0x00)), 0x00000000u);
  EXPECT_EQ(fbits(fp8_e4m3fn_to_f32(0x80)), 0x80000000u);  // -0
  EXPECT_TRUE(std::signbit(fp8_e4m3fn_to_f32(0x80)));
  EXPECT_EQ(fp8_e4m3fn_to_f32(0x7E), 448.0f);
  EXPECT_EQ(fp8_e4m3fn_to_f32(0xFE), -448.0f);
  EXPECT_EQ(fp8_e4m3fn_to_f32(0x08), 0x1p-6f);  // min normal
  EXPECT_EQ(fp8_e4m3fn_to_f32(0x07), 7 * 0x1p-9f);
  EXPECT_EQ(fp8_e4m3fn_to_f32(0x01), 0x1p-9f);  // min subnormal
  EXPECT_EQ(fp8_e4m3fn_to_f32(0x38), 1.0f);
  EXPECT_EQ(fp8_e4m3fn_to_f32(0xBC), -1.5f);
  EXPECT_EQ(kFp8E4m3Max, 448.0f);
  // Finite values ascend with the code, so the format has no gaps or duplicates.
  for (int c = 1; c < 0x7F; ++c) {
    EXPECT_LT(fp8_e4m3fn_to_f32(static_cast<uint8_t>(c - 1)),
              fp8_e4m3fn_to_f32(static_cast<uint8_t>(c)));
  }
}

TEST(Fp8E4m3Encode, RoundTripEveryFiniteCode) {
  for (int code = 0; code < 256; ++code) {
    if (is_nan_code(code)) continue;
    const float v = fp8_e4m3fn_to_f32(static_cast<uint8_t>(code));
    EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(v), code) << "code " << code;
    EXPECT_EQ(f32_to_fp8_e4m3fn_torch(v), code) << "code " << code;
  }
}

TEST(Fp8E4m3Encode, TorchHandCases) {
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(0.0f), 0x00);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(-0.0f), 0x80);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(1.0f), 0x38);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(448.0f), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(463.99f), 0x7E);
  // c10 compares against 480.0f, not 464: 464 is an exact tie between 448 (even mantissa) and the
  // NaN slot, so it rounds to 448; anything above it rounds into 0x7F.
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(464.0f), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(-464.0f), 0xFE);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(std::nextafter(464.0f, 1e9f)), 0x7F);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(std::nextafter(-464.0f, -1e9f)), 0xFF);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(479.99f), 0x7F);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(480.0f), 0x7F);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(-480.0f), 0xFF);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(FLT_MAX), 0x7F);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(std::numeric_limits<float>::infinity()), 0x7F);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(-std::numeric_limits<float>::infinity()), 0xFF);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(-std::numeric_limits<float>::quiet_NaN()), 0xFF);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(std::numeric_limits<float>::signaling_NaN()), 0x7F);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(std::bit_cast<float>(0x7F800001u)), 0x7F);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(std::bit_cast<float>(0xFFFFFFFFu)), 0xFF);
  // Subnormal grid 2^-9, ties to even.
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(0x1p-10f), 0x00);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(-0x1p-10f), 0x80);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(std::nextafter(0x1p-10f, 1.0f)), 0x01);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(1.5f * 0x1p-10f), 0x01);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(0x1p-9f), 0x01);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(2.5f * 0x1p-9f), 0x02);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(3.5f * 0x1p-9f), 0x04);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(7.5f * 0x1p-9f), 0x08);  // tie across the subnormal/normal edge
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(std::nextafter(7.5f * 0x1p-9f, 0.0f)), 0x07);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(FLT_TRUE_MIN), 0x00);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(-FLT_MIN), 0x80);
  // A typical weight lands at 1.25 * 2^-6 (0.02 = 1.28 * 2^-6).
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(0.02f), 0x0A);
  // Normal ties: 1.0625 is halfway between 1 (0x38) and 1.125 (0x39) -> even 0x38; 1.1875 -> 0x3A.
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(1.0625f), 0x38);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(1.1875f), 0x3A);
  EXPECT_EQ(f32_to_fp8_e4m3fn_torch(-1.1875f), 0xBA);
}

TEST(Fp8E4m3Encode, SaturatingHandCases) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(0.0f), 0x00);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(-0.0f), 0x80);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(448.0f), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(449.0f), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(464.0f), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(465.0f), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(480.0f), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(-480.0f), 0xFE);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(FLT_MAX), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(-FLT_MAX), 0xFE);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(inf), 0x7E);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(-inf), 0xFE);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(-std::numeric_limits<float>::quiet_NaN()), 0xFF);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(std::bit_cast<float>(0x7F800001u)), 0x7F);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(0x1p-10f), 0x00);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(1.5f * 0x1p-10f), 0x01);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(-7.5f * 0x1p-9f), 0x88);
  EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(1.0625f), 0x38);
}

TEST(Fp8E4m3Encode, EveryExponentWithSelectedMantissas) {
  std::mt19937 rng(12345);
  const uint32_t fixed[] = {0x000000, 0x000001, 0x000002, 0x03FFFF, 0x040000, 0x07FFFF,
                            0x080000, 0x080001, 0x0FFFFF, 0x100000, 0x17FFFF, 0x180000,
                            0x180001, 0x3FFFFF, 0x400000, 0x400001, 0x7FFFFE, 0x7FFFFF};
  std::vector<float> xs;
  for (uint32_t sign = 0; sign < 2; ++sign) {
    for (uint32_t e = 0; e < 256; ++e) {
      for (uint32_t m : fixed) xs.push_back(std::bit_cast<float>(sign << 31 | e << 23 | m));
      for (int i = 0; i < 64; ++i) {
        xs.push_back(std::bit_cast<float>(sign << 31 | e << 23 | (u32(rng) & 0x7FFFFFu)));
      }
    }
  }
  check_encoders(xs);
}

TEST(Fp8E4m3Encode, MidpointsAndTheirNeighbours) {
  std::vector<float> xs;
  // Midpoints between consecutive magnitudes (including 448..480, i.e. 464); each is exact in
  // float, and one float ulp either side must round away from the tie.
  for (int c = 0; c < 0x7F; ++c) {
    const float mid = static_cast<float>((kMags.v[c] + kMags.v[c + 1]) / 2);
    ASSERT_EQ(static_cast<double>(mid), (kMags.v[c] + kMags.v[c + 1]) / 2);
    for (float v : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
      xs.push_back(v);
      xs.push_back(-v);
    }
  }
  check_encoders(xs);
  // The tie rule itself, independently of the reference: a midpoint goes to the even neighbour.
  for (int c = 0; c < 0x7E; ++c) {
    const float mid = static_cast<float>((kMags.v[c] + kMags.v[c + 1]) / 2);
    const int even = (c & 1) == 0 ? c : c + 1;
    EXPECT_EQ(f32_to_fp8_e4m3fn_saturating(mid), even) << "between codes " << c << ", " << c + 1;
    EXPECT_EQ(f32_to_fp8_e4m3fn_torch(mid), even) << "between codes " << c << ", " << c + 1;
  }
}

TEST(Fp8E4m3Encode, SpecialAndBoundaryValues) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> xs = {0.0f,
                           -0.0f,
                           inf,
                           -inf,
                           std::numeric_limits<float>::quiet_NaN(),
                           -std::numeric_limits<float>::quiet_NaN(),
                           std::numeric_limits<float>::signaling_NaN(),
                           std::bit_cast<float>(0x7F800001u),
                           std::bit_cast<float>(0xFF800001u),
                           std::bit_cast<float>(0x7FFFFFFFu),
                           480.0f,
                           -480.0f,
                           0x1p-10f,
                           1.5f * 0x1p-10f,
                           FLT_MAX,
                           -FLT_MAX,
                           FLT_MIN,
                           FLT_TRUE_MIN,
                           -FLT_TRUE_MIN,
                           0x1p-6f,
                           std::nextafter(0x1p-6f, 0.0f)};
  for (float v = 447.0f; v <= 466.0f; v += 0.25f) {
    xs.push_back(v);
    xs.push_back(-v);
  }
  // Float denormals: all of them encode to +-0 but exercise the float adder on denormal inputs.
  std::mt19937 rng(7);
  for (int i = 0; i < 4096; ++i) {
    const uint32_t m = u32(rng) & 0x7FFFFFu;
    xs.push_back(std::bit_cast<float>(m));
    xs.push_back(std::bit_cast<float>(0x80000000u | m));
  }
  check_encoders(xs);
}

TEST(Fp8E4m3Encode, RandomValuesAndBitPatterns) {
  std::mt19937_64 rng(20240611);
  std::uniform_real_distribution<float> wide(-600.0f, 600.0f);
  std::uniform_real_distribution<float> log_mag(-12.0f, 9.5f);
  std::vector<float> xs;
  for (int i = 0; i < 150000; ++i) xs.push_back(wide(rng));
  // Log-uniform magnitudes cover the subnormal and small normal range as densely as the large one.
  for (int i = 0; i < 100000; ++i) {
    const float v = std::exp2(log_mag(rng));
    xs.push_back((u32(rng) & 1) ? -v : v);
  }
  for (int i = 0; i < 150000; ++i) xs.push_back(std::bit_cast<float>(u32(rng)));
  check_encoders(xs);
}

// Scales a dequantization meets: block scales, powers of two, BF16 values, and arbitrary floats
// over the whole range including subnormals and the special values.
std::vector<float> dequant_scales() {
  std::mt19937 rng(99);
  std::vector<float> s;
  for (int e = -149; e <= 127; ++e) s.push_back(std::ldexp(1.0f, e));
  const float third = 1.0f / 448.0f;
  s.push_back(third);
  float up = third, down = third;
  for (int i = 0; i < 64; ++i) {
    up = std::nextafter(up, 1.0f);
    down = std::nextafter(down, 0.0f);
    s.push_back(up);
    s.push_back(down);
  }
  std::uniform_real_distribution<float> amax(0.0f, 4.0f);
  for (int i = 0; i < 500; ++i) s.push_back(amax(rng) / 448.0f);
  for (int i = 0; i < 1000; ++i) {
    const uint32_t b = u32(rng) & 0x7F7Fu;  // positive finite BF16
    s.push_back(std::bit_cast<float>(b << 16));
  }
  for (int i = 0; i < 2000; ++i) {
    const uint32_t b = u32(rng) & 0x7FFFFFFFu;
    if ((b >> 23) != 0xFF) s.push_back(std::bit_cast<float>(b));
  }
  for (int i = 0; i < 500; ++i) s.push_back(std::bit_cast<float>(u32(rng) & 0x007FFFFFu));
  for (int i = 0; i < 200; ++i) s.push_back(-std::bit_cast<float>(u32(rng) & 0x7F7FFFFFu));
  const float inf = std::numeric_limits<float>::infinity();
  for (float v : {0.0f, -0.0f, inf, -inf, std::numeric_limits<float>::quiet_NaN(), FLT_MAX, FLT_MIN,
                  FLT_TRUE_MIN}) {
    s.push_back(v);
  }
  return s;
}

TEST(DequantFp8ToBf16, EveryCodeTimesManyScales) {
  const std::vector<float> scales = dequant_scales();
  ASSERT_GE(scales.size(), 4000u);
  int failures = 0;
  for (int code = 0; code < 256; ++code) {
    const float v = is_nan_code(code) ? std::numeric_limits<float>::quiet_NaN()
                                      : static_cast<float>(ref_decode(code));
    for (float scale : scales) {
      // The volatile forces one rounded float32 product, whatever the optimizer would like.
      volatile float product = v * scale;
      const uint16_t want = f32_to_bf16_rne(product);
      const uint16_t got = dequant_fp8_to_bf16(static_cast<uint8_t>(code), scale);
      if (got != want && ++failures <= 10) {
        ADD_FAILURE() << "code 0x" << std::hex << code << " scale " << describe(scale) << ": got 0x"
                      << got << " want 0x" << want;
      }
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(DequantFp8ToBf16, HandComputed) {
  EXPECT_EQ(dequant_fp8_to_bf16(0x38, 0.5f), 0x3F00);       // 1 * 0.5
  EXPECT_EQ(dequant_fp8_to_bf16(0x7E, 2.0f), 0x4460);       // 448 * 2 = 896
  EXPECT_EQ(dequant_fp8_to_bf16(0xFE, 1.0f), 0xC3E0);       // -448
  EXPECT_EQ(dequant_fp8_to_bf16(0x01, 0x1p-120f), 0x0010);  // 2^-129: a float/BF16 subnormal
  EXPECT_EQ(dequant_fp8_to_bf16(0x01, 0x1p-140f), 0x0000);  // 2^-149 is below BF16's 2^-133 step
  EXPECT_EQ(dequant_fp8_to_bf16(0x80, 3.0f), 0x8000);       // -0 * 3 = -0
  EXPECT_EQ(dequant_fp8_to_bf16(0x00, -3.0f), 0x8000);
  EXPECT_EQ(dequant_fp8_to_bf16(0x7F, 1.0f), 0x7FC0);
  EXPECT_EQ(dequant_fp8_to_bf16(0xFF, 1.0f), 0x7FC0);
  EXPECT_EQ(dequant_fp8_to_bf16(0x7E, FLT_MAX), 0x7F80);  // overflows to inf
  // 1.125 * 1.01171875 = 1.13818359375 (exact in float) is 17.6875 BF16 ulps above 1: up to 0x3F92.
  EXPECT_EQ(dequant_fp8_to_bf16(0x39, 1.01171875f), 0x3F92);
  // BF16 ties go to the even neighbour: 1 + 2^-8 -> 1.0, 1 + 3 * 2^-8 -> 1 + 2^-6.
  EXPECT_EQ(dequant_fp8_to_bf16(0x38, 1.00390625f), 0x3F80);
  EXPECT_EQ(dequant_fp8_to_bf16(0x38, 1.01171875f), 0x3F82);
  // A block scale: 0x7E * (3/448) is 3 up to float rounding of the scale, which BF16 absorbs.
  EXPECT_EQ(dequant_fp8_to_bf16(0x7E, 3.0f / 448.0f), 0x4040);
}

TEST(BlockScaleFromAmax, Rules) {
  EXPECT_EQ(block_scale_from_amax(448.0f), 1.0f);
  EXPECT_EQ(block_scale_from_amax(896.0f), 2.0f);
  EXPECT_EQ(block_scale_from_amax(1.0f), static_cast<float>(1.0 / 448.0));
  EXPECT_EQ(fbits(block_scale_from_amax(1.0f)), 0x3B124925u);  // 1/448 rounded to nearest
  EXPECT_EQ(block_scale_from_amax(0.0f), FLT_MIN);
  EXPECT_EQ(block_scale_from_amax(-0.0f), FLT_MIN);
  EXPECT_EQ(block_scale_from_amax(-1.0f), FLT_MIN);
  EXPECT_EQ(block_scale_from_amax(std::numeric_limits<float>::quiet_NaN()), FLT_MIN);
  EXPECT_EQ(block_scale_from_amax(FLT_TRUE_MIN), FLT_MIN);
  EXPECT_EQ(block_scale_from_amax(FLT_MIN), FLT_MIN);  // FLT_MIN / 448 is subnormal
  EXPECT_EQ(block_scale_from_amax(448.0f * FLT_MIN), FLT_MIN);
  EXPECT_EQ(block_scale_from_amax(896.0f * FLT_MIN), 2.0f * FLT_MIN);
}

TEST(BlockScaleFromAmax, MatchesCorrectlyRoundedQuotient) {
  std::mt19937 rng(5);
  int failures = 0;
  for (int i = 0; i < 200000; ++i) {
    const float amax = std::bit_cast<float>(u32(rng));
    // float(double(a) / 448) is the correctly rounded float quotient (53 >= 2 * 24 + 2).
    const float q = static_cast<float>(static_cast<double>(amax) / 448.0);
    const float want = (std::isnan(q) || q < FLT_MIN) ? FLT_MIN : q;
    const float got = block_scale_from_amax(amax);
    if (fbits(got) != fbits(want) && ++failures <= 10) {
      ADD_FAILURE() << describe(amax) << " got " << describe(got) << " want " << describe(want);
    }
    if (std::isfinite(amax)) {
      EXPECT_TRUE(got > 0.0f && std::isnormal(got)) << describe(amax);
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(BlockScaleFromAmax, QuantizedAmaxLandsNear448) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> log_mag(-40.0f, 40.0f);
  for (int i = 0; i < 10000; ++i) {
    const float amax = std::exp2(log_mag(rng));
    const float scale = block_scale_from_amax(amax);
    const uint8_t code = f32_to_fp8_e4m3fn_saturating(amax / scale);
    EXPECT_EQ(code, 0x7E) << describe(amax);
  }
}

}  // namespace
}  // namespace moeckpt::numerics
