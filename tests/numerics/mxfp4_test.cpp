// MXFP4 codecs against hand-computed values and an independent reference: every E2M1 and E8M0
// code, every rounding midpoint and its neighbours, the scale rule across the float32 range
// (subnormals included), zero blocks, signed zeros, saturation and packing order.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "moeckpt/mxfp4.hpp"

namespace moeckpt::numerics {
namespace {

// Reference rounding: the nearest E2M1 value by exhaustive search; a tie goes to the even code.
uint8_t reference_e2m1(float x) {
  const double a = std::fabs(static_cast<double>(x));
  int best = 0;
  for (int c = 1; c < 8; ++c) {
    const double dc = std::fabs(e2m1_to_f32(static_cast<uint8_t>(c)) - a);
    const double db = std::fabs(e2m1_to_f32(static_cast<uint8_t>(best)) - a);
    if (dc < db || (dc == db && c % 2 == 0)) best = c;
  }
  if (a > 6.0) best = 7;
  return static_cast<uint8_t>(best | (std::signbit(x) ? 8 : 0));
}

TEST(Mxfp4, EveryE2m1Code) {
  const float want[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
  for (int c = 0; c < 16; ++c) {
    const float v = e2m1_to_f32(static_cast<uint8_t>(c));
    EXPECT_EQ(v, want[c]) << c;
    EXPECT_EQ(std::signbit(v), c >= 8) << c;
    EXPECT_EQ(f32_to_e2m1_saturating(v), c) << c;  // every value round-trips, -0 included
    EXPECT_EQ(e2m1_to_f32(static_cast<uint8_t>(c | 0xF0)), want[c]) << "high bits ignored";
  }
}

TEST(Mxfp4, EveryE8m0Code) {
  for (int c = 0; c < 255; ++c) {
    const float v = e8m0_to_f32(static_cast<uint8_t>(c));
    EXPECT_EQ(v, static_cast<float>(std::ldexp(1.0, c - 127))) << c;
    EXPECT_GT(v, 0.0f);
  }
  EXPECT_TRUE(std::isnan(e8m0_to_f32(kE8m0Nan)));
  EXPECT_EQ(e8m0_to_f32(0), std::numeric_limits<float>::denorm_min() * 4194304.0f);  // 2^-127
}

TEST(Mxfp4, RoundsToNearestEvenAtEveryMidpointAndSaturates) {
  struct Case {
    float x;
    uint8_t code;
  };
  const Case cases[] = {{0.25f, 0}, {0.75f, 2},  {1.25f, 2},  {1.75f, 4},  {2.5f, 4},
                        {3.5f, 6},  {5.0f, 6},   {7.0f, 7},   {6.5f, 7},   {1e30f, 7},
                        {0.1f, 0},  {-0.25f, 8}, {-5.0f, 14}, {-1e30f, 15}};
  for (const auto& c : cases) EXPECT_EQ(f32_to_e2m1_saturating(c.x), c.code) << c.x;
  EXPECT_EQ(f32_to_e2m1_saturating(std::numeric_limits<float>::infinity()), 7);
  EXPECT_EQ(f32_to_e2m1_saturating(-std::numeric_limits<float>::infinity()), 15);
  EXPECT_EQ(f32_to_e2m1_saturating(-0.0f), 8);
  EXPECT_EQ(f32_to_e2m1_saturating(std::numeric_limits<float>::quiet_NaN()), 0);
  // Each midpoint's neighbours one ulp away, and a dense sweep, against the reference.
  for (float m : {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f})
    for (float x : {std::nextafter(m, 0.0f), m, std::nextafter(m, 10.0f)})
      for (float s : {1.0f, -1.0f}) EXPECT_EQ(f32_to_e2m1_saturating(s * x), reference_e2m1(s * x));
  for (int i = -80000; i <= 80000; ++i) {
    const float x = static_cast<float>(i) / 10000.0f;
    ASSERT_EQ(f32_to_e2m1_saturating(x), reference_e2m1(x)) << x;
  }
}

TEST(Mxfp4, ScaleRuleAcrossTheFloatRange) {
  EXPECT_EQ(mx_scale_code_from_amax(0.0f), 0);
  EXPECT_EQ(mx_scale_code_from_amax(6.0f), 127 + 0);  // floor(log2 6) - 2 = 0
  EXPECT_EQ(mx_scale_code_from_amax(4.0f), 127 + 0);
  EXPECT_EQ(mx_scale_code_from_amax(3.999f), 127 - 1);
  EXPECT_EQ(mx_scale_code_from_amax(1.0f), 127 - 2);
  EXPECT_EQ(mx_scale_code_from_amax(std::numeric_limits<float>::max()), 127 + 125);
  EXPECT_EQ(mx_scale_code_from_amax(std::numeric_limits<float>::infinity()), 254);
  EXPECT_EQ(mx_scale_code_from_amax(std::numeric_limits<float>::denorm_min()), 0);  // clamped
  for (int e = -149; e <= 127; ++e)
    for (double f : {1.0, 1.5, 1.9999}) {
      const float amax = static_cast<float>(std::ldexp(f, e));
      if (amax == 0.0f || std::isinf(amax)) continue;
      const int want = std::max(-127, std::min(127, e - 2)) + 127;
      ASSERT_EQ(mx_scale_code_from_amax(amax), want) << amax;
    }
}

TEST(Mxfp4, BlocksQuantizeWithTheSharedScaleAndPackLowNibbleFirst) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 2000; ++trial) {
    const float mag = std::ldexp(1.0f, static_cast<int>(rng() % 200) - 100);
    std::normal_distribution<float> dist(0.0f, mag);
    std::vector<float> x(kMxBlock);
    for (auto& v : x) v = dist(rng);
    if (trial % 10 == 0) x[rng() % kMxBlock] = 0.0f;
    if (trial % 13 == 0) x[rng() % kMxBlock] = -0.0f;
    std::vector<uint8_t> packed(kMxBlock / 2);
    const uint8_t s = quantize_mxfp4_block(x, packed);
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    ASSERT_EQ(s, mx_scale_code_from_amax(amax));
    const double scale = std::ldexp(1.0, s - 127);
    for (int i = 0; i < kMxBlock; ++i) {
      const uint8_t code = (packed[i / 2] >> (4 * (i % 2))) & 0xF;
      ASSERT_EQ(code, reference_e2m1(static_cast<float>(x[i] / scale))) << trial << " " << i;
      ASSERT_EQ(dequant_mxfp4(code, s), static_cast<float>(e2m1_to_f32(code) * scale));
    }
  }
  // A zero block: the smallest scale and all-zero codes (signs kept).
  std::vector<float> zeros(kMxBlock, 0.0f);
  zeros[3] = -0.0f;
  std::vector<uint8_t> packed(kMxBlock / 2, 0xAA);
  EXPECT_EQ(quantize_mxfp4_block(zeros, packed), 0);
  for (int i = 0; i < kMxBlock; ++i)
    EXPECT_EQ((packed[i / 2] >> (4 * (i % 2))) & 0xF, i == 3 ? 8 : 0);
  // The largest element always lands on 4 or 6 (the top binade of E2M1).
  std::vector<float> one(kMxBlock, 0.0f);
  one[0] = 7.0f;
  one[1] = 1.0f;
  EXPECT_EQ(quantize_mxfp4_block(one, packed), 127);
  EXPECT_EQ(packed[0], 0x27);  // 6 (saturated) low, 1 high
}

TEST(Mxfp4, DequantizationIsExactUntilItOverflows) {
  for (int s = 0; s < 255; ++s)
    for (int c = 0; c < 16; ++c) {
      const double want =
          static_cast<double>(e2m1_to_f32(static_cast<uint8_t>(c))) * std::ldexp(1.0, s - 127);
      const float got = dequant_mxfp4(static_cast<uint8_t>(c), static_cast<uint8_t>(s));
      if (std::fabs(want) > std::numeric_limits<float>::max())
        EXPECT_TRUE(std::isinf(got));
      else
        EXPECT_EQ(static_cast<double>(got), want) << c << " " << s;
    }
  EXPECT_TRUE(std::isnan(dequant_mxfp4(2, kE8m0Nan)));
}

}  // namespace
}  // namespace moeckpt::numerics
