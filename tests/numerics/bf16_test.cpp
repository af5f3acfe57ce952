// BF16 and F16 conversions against references built from the formats' definitions: the BF16
// rounding is checked on a dense sweep of float32 bit patterns (all 2^32 on request) by picking
// the nearer of the two neighbouring BF16 values in double precision.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string_view>
#include <thread>
#include <vector>

#include "moeckpt/numerics.hpp"

namespace moeckpt::numerics {
namespace {

// All 2^32 patterns take ~15 s of CPU (two non-inlinable conversions per pattern), too much
// for every test run: by default every 15th pattern is checked (2^28.1 of them; the stride is odd
// so all low-16-bit residues, which decide the rounding, occur), plus every tie and its neighbours
// in EveryTieAndItsNeighbours. MOECKPT_EXHAUSTIVE_TESTS=1 sweeps all 2^32.
constexpr uint64_t kDefaultSweepStride = 15;

uint64_t sweep_stride() {
  const char* env = std::getenv("MOECKPT_EXHAUSTIVE_TESTS");
  const bool exhaustive = env != nullptr && env[0] != '\0' && std::string_view(env) != "0";
  return exhaustive ? 1 : kDefaultSweepStride;
}

uint32_t fbits(float x) {
  return std::bit_cast<uint32_t>(x);
}
float from_bits(uint32_t b) {
  return std::bit_cast<float>(b);
}

// BF16 value from its fields: s eeeeeeee mmmmmmm, bias 127, subnormals m * 2^-133.
double ref_bf16_value(uint16_t h) {
  const int s = h >> 15;
  const int e = (h >> 7) & 0xFF;
  const int m = h & 0x7F;
  double mag;
  if (e == 0xFF) {
    mag =
        m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  } else {
    mag = e == 0 ? std::ldexp(m, -133) : std::ldexp(128 + m, e - 127 - 7);
  }
  return s ? -mag : mag;
}

// Nearest BF16 to x, ties to the even code. The candidates are x truncated to BF16 (its low 16
// bits cleared) and the next BF16 away from zero; when that neighbour is infinity it counts as
// 2^128, where an unbounded exponent would put it (IEEE overflow rounding). Distances are exact in
// double. Written with plain bit masks rather than ref_bf16_value so the 2^32 sweep stays fast.
uint16_t ref_bf16(float x) {
  if (std::isnan(x)) return 0x7FC0;
  const uint32_t b = fbits(x);
  if (std::isinf(x)) return static_cast<uint16_t>(b >> 16);
  const uint32_t lo = b & 0xFFFF0000u;
  const uint32_t hi = lo + 0x10000u;
  const double xv = x;
  const double lv = from_bits(lo);
  const double hv = (hi & 0x7F800000u) == 0x7F800000u ? std::copysign(0x1p128, xv)
                                                      : static_cast<double>(from_bits(hi));
  const double dl = std::fabs(xv - lv);
  const double dh = std::fabs(hv - xv);
  const uint16_t lo16 = static_cast<uint16_t>(lo >> 16);
  const uint16_t hi16 = static_cast<uint16_t>(hi >> 16);
  if (dl < dh) return lo16;
  if (dh < dl) return hi16;
  return (lo16 & 1) == 0 ? lo16 : hi16;
}

// Runs check(bits) on bits = 0, stride, 2 * stride, ... < 2^32, over all cores; returns the
// number of mismatches and one of them.
template <typename Check>
uint64_t sweep(uint64_t stride, Check check, uint32_t* some_bad) {
  const unsigned n_threads = std::max(1u, std::thread::hardware_concurrency());
  const uint64_t count = ((uint64_t{1} << 32) + stride - 1) / stride;
  const uint64_t per_thread = (count + n_threads - 1) / n_threads;
  std::atomic<uint64_t> bad{0};
  std::atomic<uint32_t> example{0};
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < n_threads; ++t) {
    threads.emplace_back([&, t] {
      const uint64_t end = std::min(count, (t + 1) * per_thread);
      uint64_t local_bad = 0;
      for (uint64_t k = t * per_thread; k < end; ++k) {
        const uint32_t bits = static_cast<uint32_t>(k * stride);
        if (!check(bits)) {
          if (local_bad++ == 0) example = bits;
        }
      }
      bad += local_bad;
    });
  }
  for (auto& th : threads) th.join();
  *some_bad = example;
  return bad;
}

TEST(Bf16Rne, EveryFloatBitPattern) {
  uint32_t example = 0;
  const uint64_t bad = sweep(
      sweep_stride(),
      [](uint32_t bits) {
        const float x = from_bits(bits);
        return f32_to_bf16_rne(x) == ref_bf16(x);
      },
      &example);
  EXPECT_EQ(bad, 0u) << "e.g. at float bits 0x" << std::hex << example << ": got 0x"
                     << f32_to_bf16_rne(from_bits(example)) << " want 0x"
                     << ref_bf16(from_bits(example));
}

TEST(Bf16Rne, EveryTieAndItsNeighbours) {
  int failures = 0;
  for (uint32_t upper = 0; upper < 0x10000u; ++upper) {
    for (uint32_t low : {0x7FFFu, 0x8000u, 0x8001u, 0x0000u, 0xFFFFu}) {
      const float x = from_bits(upper << 16 | low);
      const uint16_t got = f32_to_bf16_rne(x);
      const uint16_t want = ref_bf16(x);
      if (got != want && ++failures <= 10) {
        ADD_FAILURE() << std::hex << "bits 0x" << fbits(x) << ": got 0x" << got << " want 0x"
                      << want;
      }
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(Bf16Rne, HandCases) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(f32_to_bf16_rne(0.0f), 0x0000);
  EXPECT_EQ(f32_to_bf16_rne(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16_rne(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16_rne(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_bf16_rne(inf), 0x7F80);
  EXPECT_EQ(f32_to_bf16_rne(-inf), 0xFF80);
  EXPECT_EQ(f32_to_bf16_rne(std::numeric_limits<float>::quiet_NaN()), 0x7FC0);
  EXPECT_EQ(f32_to_bf16_rne(-std::numeric_limits<float>::quiet_NaN()), 0x7FC0);
  EXPECT_EQ(f32_to_bf16_rne(std::numeric_limits<float>::signaling_NaN()), 0x7FC0);
  EXPECT_EQ(f32_to_bf16_rne(from_bits(0x7F800001u)), 0x7FC0);  // would round to inf
  EXPECT_EQ(f32_to_bf16_rne(from_bits(0x7FFFFFFFu)), 0x7FC0);  // would wrap to -0
  EXPECT_EQ(f32_to_bf16_rne(from_bits(0xFFFFFFFFu)), 0x7FC0);
  // Ties: 1 + 2^-8 is halfway between 1 (even) and 1 + 2^-7.
  EXPECT_EQ(f32_to_bf16_rne(1.00390625f), 0x3F80);
  EXPECT_EQ(f32_to_bf16_rne(1.01171875f), 0x3F82);
  EXPECT_EQ(f32_to_bf16_rne(std::nextafter(1.00390625f, 2.0f)), 0x3F81);
  // Overflow by rounding: past the midpoint between the largest BF16 and 2^128.
  EXPECT_EQ(f32_to_bf16_rne(from_bits(0x7F7F7FFFu)), 0x7F7F);
  EXPECT_EQ(f32_to_bf16_rne(from_bits(0x7F7F8000u)), 0x7F80);
  EXPECT_EQ(f32_to_bf16_rne(FLT_MAX), 0x7F80);
  EXPECT_EQ(f32_to_bf16_rne(-FLT_MAX), 0xFF80);
  // Float subnormals round onto the BF16 subnormal grid (2^-133).
  EXPECT_EQ(f32_to_bf16_rne(FLT_TRUE_MIN), 0x0000);
  EXPECT_EQ(f32_to_bf16_rne(0x1p-133f), 0x0001);
  EXPECT_EQ(f32_to_bf16_rne(0x1p-134f), 0x0000);                      // tie -> even 0
  EXPECT_EQ(f32_to_bf16_rne(0x3p-134f), 0x0002);                      // tie -> even 2
  EXPECT_EQ(f32_to_bf16_rne(std::nextafter(FLT_MIN, 0.0f)), 0x0080);  // rounds up to FLT_MIN
}

TEST(Bf16ToF32, EveryCode) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const uint16_t code = static_cast<uint16_t>(h);
    const float got = bf16_to_f32(code);
    const double want = ref_bf16_value(code);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
      EXPECT_EQ(fbits(got) >> 16, h) << "NaN payload and sign are kept";
      continue;
    }
    EXPECT_EQ(fbits(got), fbits(static_cast<float>(want))) << "code " << h;
    // Every BF16 value is a float32, so the round trip is the identity.
    EXPECT_EQ(f32_to_bf16_rne(got), code) << "code " << h;
  }
}

// IEEE half from its fields: s eeeee mmmmmmmmmm, bias 15, subnormals m * 2^-24.
TEST(F16ToF32, EveryCode) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const int s = h >> 15;
    const int e = (h >> 10) & 0x1F;
    const int m = h & 0x3FF;
    const float got = f16_to_f32(static_cast<uint16_t>(h));
    EXPECT_EQ(std::signbit(got), s == 1) << h;
    if (e == 0x1F) {
      if (m == 0) {
        EXPECT_TRUE(std::isinf(got)) << h;
      } else {
        EXPECT_TRUE(std::isnan(got)) << h;
        // The 10-bit payload sits at the top of float's mantissa (quiet bit included).
        EXPECT_EQ(fbits(got) & 0x007FFFFFu, static_cast<uint32_t>(m) << 13) << h;
      }
      EXPECT_EQ(fbits(got) & 0x7F800000u, 0x7F800000u) << h;
      continue;
    }
    const double mag = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 15 - 10);
    const double want = s ? -mag : mag;
    EXPECT_EQ(fbits(got), fbits(static_cast<float>(want))) << "code 0x" << std::hex << h;
    EXPECT_EQ(static_cast<double>(got), want) << "code 0x" << std::hex << h;
  }
}

TEST(F16ToF32, Landmarks) {
  EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0400), 0x1p-14f);
  EXPECT_EQ(f16_to_f32(0x0001), 0x1p-24f);
  EXPECT_EQ(f16_to_f32(0x03FF), 1023 * 0x1p-24f);
  EXPECT_EQ(fbits(f16_to_f32(0x8000)), 0x80000000u);
  EXPECT_EQ(fbits(f16_to_f32(0x7C00)), 0x7F800000u);
  EXPECT_EQ(fbits(f16_to_f32(0xFC00)), 0xFF800000u);
  EXPECT_EQ(fbits(f16_to_f32(0x7E00)), 0x7FC00000u);
  EXPECT_EQ(fbits(f16_to_f32(0xFD01)), 0xFFA02000u);  // signaling NaN keeps sign and payload
}

}  // namespace
}  // namespace moeckpt::numerics

namespace moeckpt::numerics {
namespace {

// Nearest F16 to x by definition (the two neighbouring codes, distances in double, ties to the
// even code, 65536 standing in for infinity as IEEE overflow rounding has it); NaN as torch's copy_
// (and F16C) converts it: quiet, sign and the top 10 payload bits kept.
uint16_t ref_f16(float x) {
  const uint32_t b = fbits(x);
  const auto sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
  if (std::isnan(x)) return sign | 0x7E00u | static_cast<uint16_t>((b & 0x7FFFFFu) >> 13);
  const double ax = std::fabs(static_cast<double>(x));
  auto mag = [](uint32_t c) {
    return c >= 0x7C00u ? 65536.0 : static_cast<double>(f16_to_f32(static_cast<uint16_t>(c)));
  };
  if (ax >= 65536.0) return sign | 0x7C00u;
  uint32_t lo = 0;  // the largest code whose magnitude is <= ax (codes are ordered like values)
  for (uint32_t step = 1u << 14; step; step >>= 1)
    if (lo + step <= 0x7C00u && mag(lo + step) <= ax) lo += step;
  if (mag(lo) == ax) return sign | static_cast<uint16_t>(lo);
  const double dl = ax - mag(lo), dh = mag(lo + 1) - ax;
  const uint32_t c = dl < dh ? lo : dh < dl ? lo + 1 : ((lo & 1) == 0 ? lo : lo + 1);
  return sign | static_cast<uint16_t>(c);
}

TEST(F16Rne, FloatBitPatternsAgainstTheDefinition) {
  uint32_t example = 0;
  const uint64_t stride = sweep_stride() == 1 ? 1 : 255;  // odd: every low-13-bit residue occurs
  const uint64_t bad = sweep(
      stride,
      [](uint32_t bits) { return f32_to_f16_rne(from_bits(bits)) == ref_f16(from_bits(bits)); },
      &example);
  EXPECT_EQ(bad, 0u) << "e.g. at float bits 0x" << std::hex << example << ": got 0x"
                     << f32_to_f16_rne(from_bits(example)) << " want 0x"
                     << ref_f16(from_bits(example));
}

TEST(F16Rne, EveryTieAndItsNeighbours) {
  int failures = 0;
  for (uint32_t c = 0; c < 0x7C00u; ++c) {  // the midpoint of c and c + 1 (65536 above 65504)
    const double lo = f16_to_f32(static_cast<uint16_t>(c));
    const double hi = c + 1 == 0x7C00u ? 65536.0 : f16_to_f32(static_cast<uint16_t>(c + 1));
    const float mid = static_cast<float>((lo + hi) / 2);  // 12 significant bits: exact
    for (float x : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f), -mid}) {
      if (f32_to_f16_rne(x) != ref_f16(x) && ++failures <= 10)
        ADD_FAILURE() << std::hex << "bits 0x" << fbits(x) << ": got 0x" << f32_to_f16_rne(x)
                      << " want 0x" << ref_f16(x);
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(F16Rne, HandCases) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(f32_to_f16_rne(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16_rne(65504.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16_rne(65519.996f), 0x7BFF);
  EXPECT_EQ(f32_to_f16_rne(65520.0f), 0x7C00);  // the tie above the largest finite: infinity
  EXPECT_EQ(f32_to_f16_rne(-1e38f), 0xFC00);
  EXPECT_EQ(f32_to_f16_rne(inf), 0x7C00);
  EXPECT_EQ(f32_to_f16_rne(0x1p-24f), 0x0001);
  EXPECT_EQ(f32_to_f16_rne(0x1p-25f), 0x0000);  // ties to the even zero
  EXPECT_EQ(f32_to_f16_rne(std::nextafter(0x1p-25f, 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_f16_rne(3 * 0x1p-25f), 0x0002);  // 1.5 units ties to the even 2
  EXPECT_EQ(f32_to_f16_rne(std::nextafter(0x1p-14f, 0.0f)), 0x0400);  // rounds up to the normal
  EXPECT_EQ(f32_to_f16_rne(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16_rne(from_bits(0x7FC00000u)), 0x7E00);
  EXPECT_EQ(f32_to_f16_rne(from_bits(0xFFFFFFFFu)), 0xFFFF);
  EXPECT_EQ(f32_to_f16_rne(from_bits(0x7F800001u)), 0x7E00);  // a signaling NaN comes out quiet
  EXPECT_EQ(f32_to_f16_rne(from_bits(0x7FA5A5A5u)), 0x7F2D);  // what torch 2.11's copy_ gives
}

}  // namespace
}  // namespace moeckpt::numerics
