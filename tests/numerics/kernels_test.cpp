// Bulk kernels: every SIMD ISA this CPU has must match the scalar kernel bit for bit (including the
// untouched padding between rows), and the scalar kernel must match the element-wise codecs.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "moeckpt/error.hpp"
#include "moeckpt/kernels.hpp"
#include "moeckpt/numerics.hpp"

namespace moeckpt::kernels {
namespace {

using numerics::bf16_to_f32;
using numerics::f32_to_bf16_rne;
using numerics::fp8_e4m3fn_to_f32;

uint32_t u32(std::mt19937_64& rng) {
  return static_cast<uint32_t>(rng());
}

float fbits(uint32_t b) {
  return std::bit_cast<float>(b);
}

// Scales that stress every path: exact powers of two, ordinary values, products that land in the
// subnormal range or overflow to infinity, and scales no real checkpoint has (0, negative, inf,
// NaN) which must still agree bit for bit.
float pick_scale(std::mt19937_64& rng, bool finite_only = false) {
  static const float kSpecial[] = {0.0f,
                                   -0.0f,
                                   std::numeric_limits<float>::infinity(),
                                   -std::numeric_limits<float>::infinity(),
                                   std::numeric_limits<float>::quiet_NaN(),
                                   fbits(0xFFC12345u),
                                   -1.5f,
                                   FLT_MIN,
                                   std::numeric_limits<float>::denorm_min(),
                                   FLT_MAX,
                                   0x1p-130f,
                                   0x1.8p-140f};
  switch (u32(rng) % 10) {
    case 0:
      return std::ldexp(1.0f, static_cast<int>(u32(rng) % 268) - 140);
    case 1:
      return 0x1p-130f * (1.0f + static_cast<float>(u32(rng) % 1000) / 1000.0f);
    case 2:
      return 0x1p120f * (1.0f + static_cast<float>(u32(rng) % 1000) / 1000.0f);
    case 3: {
      const float v = kSpecial[u32(rng) % std::size(kSpecial)];
      return finite_only && !std::isfinite(v) ? 0x1p-140f : v;
    }
    default: {
      // Log-uniform in [2^-20, 2^4] with random mantissa bits.
      const uint32_t exp = 107u + u32(rng) % 24u;
      return fbits((exp << 23) | (u32(rng) & 0x7FFFFFu));
    }
  }
}

struct Scales {
  std::vector<float> grid;  // rows x nb
  std::vector<const float*> rows;
};

Scales make_scales(int64_t rows, int64_t nb, std::mt19937_64& rng, bool finite_only = false) {
  Scales s;
  s.grid.resize(static_cast<size_t>(rows * nb));
  for (auto& v : s.grid) v = pick_scale(rng, finite_only);
  for (int64_t r = 0; r < rows; ++r) s.rows.push_back(&s.grid[static_cast<size_t>(r * nb)]);
  return s;
}

std::vector<Isa> simd_isas() {
  return {Isa::kAvx2, Isa::kAvx512};
}

class KernelsIsa : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!isa_available(GetParam())) GTEST_SKIP() << isa_name(GetParam()) << " not on this CPU";
  }
};

struct DequantResult {
  std::vector<uint8_t> bytes;
  uint64_t nans;
};

// Runs one dequantization into a sentinel-filled buffer with row padding, so stray writes show.
DequantResult run_dequant(DequantArgs a, Isa isa) {
  const int64_t out_rows = a.transpose ? a.cols : a.rows;
  const size_t esize = a.dst_f32 ? 4 : 2;
  std::vector<uint8_t> buf(static_cast<size_t>(out_rows * a.dst_ld) * esize, 0xA5);
  a.dst = buf.data();
  const uint64_t n = dequant_fp8(a, isa);
  return {std::move(buf), n};
}

void expect_dequant_same(const DequantArgs& a, Isa isa) {
  const DequantResult ref = run_dequant(a, Isa::kScalar);
  const DequantResult got = run_dequant(a, isa);
  EXPECT_EQ(got.nans, ref.nans);
  if (got.bytes == ref.bytes) return;
  const size_t esize = a.dst_f32 ? 4 : 2;
  for (size_t i = 0; i < ref.bytes.size(); i += esize) {
    uint32_t x = 0, y = 0;
    std::memcpy(&x, &ref.bytes[i], esize);
    std::memcpy(&y, &got.bytes[i], esize);
    if (x != y) {
      const int64_t e = static_cast<int64_t>(i / esize);
      ADD_FAILURE() << isa_name(isa) << " rows=" << a.rows << " cols=" << a.cols
                    << " bc=" << a.block_cols << " T=" << a.transpose << " f32=" << a.dst_f32
                    << " torch=" << a.torch_nan << ": out[" << e / a.dst_ld << "][" << e % a.dst_ld
                    << "] = 0x" << std::hex << y << ", scalar 0x" << x;
      return;
    }
  }
}

// Every code against many scales: one row per scale, all 256 codes in each row.
TEST_P(KernelsIsa, DequantAllCodesManyScales) {
  std::mt19937_64 rng(1);
  // Finite scales first, then all kinds: the kernels take a NaN-free fast path only when every
  // scale is finite, so both halves and the whole exercise different code.
  std::vector<float> scales;
  for (int e = -149; e <= 127; e += 3) scales.push_back(std::ldexp(1.0f, e));
  for (int i = 0; i < 200; ++i) scales.push_back(pick_scale(rng, true));
  const int64_t finite_rows = static_cast<int64_t>(scales.size());
  for (int i = 0; i < 200; ++i) scales.push_back(pick_scale(rng));
  const int64_t rows = static_cast<int64_t>(scales.size());
  std::vector<uint8_t> codes(static_cast<size_t>(rows * 256));
  for (int64_t r = 0; r < rows; ++r)
    for (int c = 0; c < 256; ++c)
      codes[static_cast<size_t>(r * 256 + c)] = static_cast<uint8_t>((c + r * 37) & 0xFF);
  std::vector<const float*> row_scale;
  for (auto& s : scales) row_scale.push_back(&s);
  for (int64_t n : {finite_rows, rows})
    for (bool transpose : {false, true})
      for (bool f32 : {false, true})
        for (bool torch : {false, true}) {
          DequantArgs a;
          a.src = codes.data();
          a.rows = n;
          a.cols = 256;
          a.src_ld = 256;
          a.row_scale = row_scale.data();
          a.block_cols = 256;
          a.dst_ld = (transpose ? n : 256) + 1;
          a.dst_f32 = f32;
          a.transpose = transpose;
          a.torch_nan = torch;
          expect_dequant_same(a, GetParam());
          EXPECT_EQ(run_dequant(a, GetParam()).nans, static_cast<uint64_t>(2 * n));
        }
}

struct Shape {
  int64_t rows, cols;
};
const Shape kShapes[] = {{1, 1},   {7, 13},  {129, 300}, {256, 128}, {200, 72},
                         {32, 16}, {33, 17}, {16, 8},    {31, 257},  {64, 512}};

// Data regimes: anything goes (exact path); finite scales and no NaN code (the fast path real
// checkpoints take); finite scales with rare NaN codes (fast path, then an exact redo of the tiles
// that hold one).
enum class Regime { kAnything, kClean, kRareNan };

TEST_P(KernelsIsa, DequantShapesBlocksLayouts) {
  std::mt19937_64 rng(2);
  for (Regime regime : {Regime::kAnything, Regime::kClean, Regime::kRareNan})
    for (const Shape& sh : kShapes)
      for (int64_t bc :
           {int64_t{128}, int64_t{64}, int64_t{24}, int64_t{1}, int64_t{100}, int64_t{47}}) {
        const int64_t nb = (sh.cols + bc - 1) / bc;
        const int64_t src_ld = sh.cols + 5;
        std::vector<uint8_t> codes(static_cast<size_t>(sh.rows * src_ld));
        for (auto& c : codes) {
          c = static_cast<uint8_t>(u32(rng));
          if (regime != Regime::kAnything && (c & 0x7F) == 0x7F) c ^= 0x01;
          if (regime == Regime::kRareNan && u32(rng) % 2000 == 0) c = u32(rng) & 1 ? 0x7F : 0xFF;
        }
        // Scale rows shared in groups of 3 weight rows, like a [rows/128, cols/128] grid.
        Scales s = make_scales((sh.rows + 2) / 3, nb, rng, regime != Regime::kAnything);
        std::vector<const float*> row_scale;
        for (int64_t r = 0; r < sh.rows; ++r)
          row_scale.push_back(s.rows[static_cast<size_t>(r / 3)]);
        for (bool transpose : {false, true})
          for (bool f32 : {false, true})
            for (bool torch : {false, true}) {
              DequantArgs a;
              a.src = codes.data();
              a.rows = sh.rows;
              a.cols = sh.cols;
              a.src_ld = src_ld;
              a.row_scale = row_scale.data();
              a.block_cols = bc;
              a.dst_ld = (transpose ? sh.rows : sh.cols) + 3;
              a.dst_f32 = f32;
              a.transpose = transpose;
              a.torch_nan = torch;
              expect_dequant_same(a, GetParam());
            }
      }
}

TEST_P(KernelsIsa, DequantWithoutScale) {
  std::vector<uint8_t> codes(256 * 3);
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<uint8_t>(i);
  for (bool transpose : {false, true}) {
    DequantArgs a;
    a.src = codes.data();
    a.rows = 48;
    a.cols = 16;
    a.src_ld = 16;
    a.dst_ld = transpose ? 48 : 16;
    a.transpose = transpose;
    expect_dequant_same(a, GetParam());
  }
}

// Transposed output whose rows are whole cache lines apart, starting at every offset within a line:
// the AVX-512 kernel then narrows its first row strip so the later stores are aligned.
TEST_P(KernelsIsa, DequantTransposedAnyAlignment) {
  std::mt19937_64 rng(7);
  const int64_t rows = 100, cols = 40, dst_ld = 128;
  std::vector<uint8_t> codes(static_cast<size_t>(rows * cols));
  for (auto& c : codes) c = static_cast<uint8_t>(u32(rng));
  Scales s = make_scales(rows, 1, rng, true);
  for (bool f32 : {false, true}) {
    const size_t esize = f32 ? 4 : 2;
    const size_t bytes = static_cast<size_t>(cols * dst_ld) * esize + 128;
    for (size_t offset = 0; offset < 64 + esize; offset += esize) {
      std::vector<uint8_t> out[2];
      uint64_t nans[2];
      for (int k = 0; k < 2; ++k) {
        out[k].assign(bytes + 64, 0xA5);
        // Offset from a cache-line boundary inside the buffer, whatever the allocator returned.
        const size_t skew = (64 - reinterpret_cast<uintptr_t>(out[k].data()) % 64) % 64;
        DequantArgs a;
        a.src = codes.data();
        a.rows = rows;
        a.cols = cols;
        a.src_ld = cols;
        a.row_scale = s.rows.data();
        a.block_cols = 128;
        a.dst = out[k].data() + skew + offset;
        a.dst_ld = dst_ld;
        a.dst_f32 = f32;
        a.transpose = true;
        nans[k] = dequant_fp8(a, k == 0 ? Isa::kScalar : GetParam());
        out[k].erase(out[k].begin(), out[k].begin() + static_cast<ptrdiff_t>(skew));
        out[k].resize(bytes);
      }
      EXPECT_EQ(nans[0], nans[1]);
      EXPECT_TRUE(out[0] == out[1]) << "offset " << offset << " f32 " << f32;
    }
  }
}

std::vector<uint8_t> run_quant(QuantArgs a, Isa isa) {
  std::vector<uint8_t> buf(static_cast<size_t>(a.rows * a.dst_ld), 0xA5);
  a.dst = buf.data();
  quant_bf16_to_fp8(a, isa);
  return buf;
}

void expect_quant_same(const QuantArgs& a, Isa isa) {
  const auto ref = run_quant(a, Isa::kScalar);
  const auto got = run_quant(a, isa);
  if (got == ref) return;
  for (size_t i = 0; i < ref.size(); ++i)
    if (ref[i] != got[i]) {
      ADD_FAILURE() << isa_name(isa) << " rows=" << a.rows << " cols=" << a.cols
                    << " bc=" << a.block_cols << " T=" << a.transpose << " mode=" << a.mode
                    << ": code[" << i / static_cast<size_t>(a.dst_ld) << "]["
                    << i % static_cast<size_t>(a.dst_ld) << "] = 0x" << std::hex << int{got[i]}
                    << ", scalar 0x" << int{ref[i]};
      return;
    }
}

// BF16 inputs around every E4M3 decision point plus random bit patterns.
std::vector<uint16_t> quant_inputs(size_t n, std::mt19937_64& rng) {
  std::vector<uint16_t> special;
  for (float f = 440.0f; f <= 482.0f; f += 0.5f) special.push_back(f32_to_bf16_rne(f));
  for (float f : {447.0f,    448.0f, 449.0f,   463.0f,     464.0f,  465.0f,    466.0f,  480.0f,
                  0.0f,      -0.0f,  0x1p-10f, 0x1.8p-10f, 0x1p-9f, 0x1.8p-9f, 0x1p-6f, 0x1.Fp-7f,
                  0x1.Cp-7f, 1.0f,   0.0625f,  240.0f,     1e30f,   -1e-30f})
    for (float sign : {1.0f, -1.0f}) special.push_back(f32_to_bf16_rne(f * sign));
  for (uint16_t b : {0x7F80, 0xFF80, 0x7FC0, 0xFFC0, 0x7F81, 0xFFFF, 0x0001, 0x007F, 0x8005, 0x0080,
                     0x7F7F, 0xFF7F})
    special.push_back(b);
  std::vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = u32(rng) % 3 == 0 ? special[u32(rng) % special.size()] : static_cast<uint16_t>(u32(rng));
  return v;
}

TEST_P(KernelsIsa, QuantAllBf16Values) {
  // All 65536 BF16 patterns as a 256 x 256 matrix, cast and saturating under varied scales.
  std::mt19937_64 rng(3);
  std::vector<uint16_t> src(65536);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint16_t>(i * 40503u);
  Scales s = make_scales(256, 2, rng);
  for (int i = 0; i < 64; ++i) s.grid[static_cast<size_t>(i)] = 1.0f;  // plain saturation
  for (bool transpose : {false, true})
    for (auto mode : {QuantArgs::kTorchCast, QuantArgs::kSaturating}) {
      QuantArgs a;
      a.src = src.data();
      a.rows = 256;
      a.cols = 256;
      a.src_ld = 256;
      a.transpose = transpose;
      a.dst_ld = 256;
      a.mode = mode;
      a.row_scale = s.rows.data();
      a.block_cols = 128;
      expect_quant_same(a, GetParam());
    }
}

TEST_P(KernelsIsa, QuantShapesBlocksLayouts) {
  std::mt19937_64 rng(4);
  for (const Shape& sh : kShapes)
    for (int64_t bc :
         {int64_t{128}, int64_t{64}, int64_t{24}, int64_t{1}, int64_t{100}, int64_t{47}})
      for (bool transpose : {false, true}) {
        const int64_t src_rows = transpose ? sh.cols : sh.rows;
        const int64_t src_ld = (transpose ? sh.rows : sh.cols) + 7;
        const auto src = quant_inputs(static_cast<size_t>(src_rows * src_ld), rng);
        Scales s = make_scales(sh.rows, (sh.cols + bc - 1) / bc, rng);
        for (auto mode : {QuantArgs::kTorchCast, QuantArgs::kSaturating}) {
          QuantArgs a;
          a.src = src.data();
          a.rows = sh.rows;
          a.cols = sh.cols;
          a.src_ld = src_ld;
          a.transpose = transpose;
          a.dst_ld = sh.cols + 2;
          a.mode = mode;
          a.row_scale = mode == QuantArgs::kSaturating ? s.rows.data() : nullptr;
          a.block_cols = bc;
          expect_quant_same(a, GetParam());
        }
      }
}

std::vector<float> run_amax(const std::vector<uint16_t>& src, int64_t rows, int64_t cols,
                            int64_t src_ld, bool transpose, int64_t br, int64_t bc,
                            std::vector<float> amax, int64_t amax_ld, Isa isa) {
  block_amax_bf16(src.data(), rows, cols, src_ld, transpose, br, bc, amax.data(), amax_ld, isa);
  return amax;
}

TEST_P(KernelsIsa, BlockAmax) {
  std::mt19937_64 rng(5);
  const int64_t blocks[][2] = {{128, 128}, {1, 1}, {3, 5}, {64, 24}, {200, 7}, {16, 100}};
  for (const Shape& sh : kShapes)
    for (const auto& b : blocks)
      for (bool transpose : {false, true}) {
        const int64_t src_rows = transpose ? sh.cols : sh.rows;
        const int64_t src_ld = (transpose ? sh.rows : sh.cols) + 3;
        auto src = quant_inputs(static_cast<size_t>(src_rows * src_ld), rng);
        // Some all-non-finite stretches so whole blocks can have no finite value.
        for (size_t i = 0; i < src.size() / 8; ++i) src[i] = i % 2 ? 0x7FC1 : 0xFF80;
        const int64_t nbr = (sh.rows + b[0] - 1) / b[0], nbc = (sh.cols + b[1] - 1) / b[1];
        const int64_t ld = nbc + 1;
        std::vector<float> init(static_cast<size_t>(nbr * ld));
        for (auto& v : init) {
          const uint32_t k = u32(rng) % 8;
          v = k < 4 ? 0.0f : k == 4 ? -0.0f : k == 5 ? -1.0f : k == 6 ? 3.0f : NAN;
        }
        const auto ref =
            run_amax(src, sh.rows, sh.cols, src_ld, transpose, b[0], b[1], init, ld, Isa::kScalar);
        const auto got =
            run_amax(src, sh.rows, sh.cols, src_ld, transpose, b[0], b[1], init, ld, GetParam());
        ASSERT_EQ(0, std::memcmp(ref.data(), got.data(), ref.size() * 4))
            << "rows=" << sh.rows << " cols=" << sh.cols << " br=" << b[0] << " bc=" << b[1]
            << " T=" << transpose;
      }
}

// One block spanning any width: block_cols may be as large as int64 allows.
TEST_P(KernelsIsa, HugeBlockSizes) {
  std::mt19937_64 rng(8);
  const int64_t big = std::numeric_limits<int64_t>::max();
  std::vector<uint8_t> codes(3 * 40);
  for (auto& c : codes) c = static_cast<uint8_t>(u32(rng));
  Scales s = make_scales(3, 1, rng, true);
  for (bool transpose : {false, true}) {
    DequantArgs a;
    a.src = codes.data();
    a.rows = 3;
    a.cols = 40;
    a.src_ld = 40;
    a.row_scale = s.rows.data();
    a.block_cols = big;
    a.dst_ld = transpose ? 3 : 40;
    a.transpose = transpose;
    expect_dequant_same(a, GetParam());
  }
  const auto src = quant_inputs(3 * 40, rng);
  QuantArgs q;
  q.src = src.data();
  q.rows = 3;
  q.cols = 40;
  q.src_ld = 40;
  q.dst_ld = 40;
  q.mode = QuantArgs::kSaturating;
  q.row_scale = s.rows.data();
  q.block_cols = big;
  expect_quant_same(q, GetParam());
  const auto ref = run_amax(src, 3, 40, 40, false, big, big, {0.0f}, 1, Isa::kScalar);
  EXPECT_EQ(ref, run_amax(src, 3, 40, 40, false, big, big, {0.0f}, 1, GetParam()));
}

INSTANTIATE_TEST_SUITE_P(Kernels, KernelsIsa, ::testing::ValuesIn(simd_isas()),
                         [](const auto& info) { return std::string(isa_name(info.param)); });

// The scalar kernel against the formula written out element by element.
TEST(KernelsScalar, MatchesElementwiseFormula) {
  std::mt19937_64 rng(6);
  const int64_t rows = 37, cols = 300, bc = 128, nb = 3;
  std::vector<uint8_t> codes(static_cast<size_t>(rows * cols));
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<uint8_t>(i * 7 + i / 256);
  Scales s = make_scales(rows, nb, rng);
  for (bool transpose : {false, true})
    for (bool f32 : {false, true})
      for (bool torch : {false, true}) {
        DequantArgs a;
        a.src = codes.data();
        a.rows = rows;
        a.cols = cols;
        a.src_ld = cols;
        a.row_scale = s.rows.data();
        a.block_cols = bc;
        a.dst_ld = transpose ? rows : cols;
        a.dst_f32 = f32;
        a.transpose = transpose;
        a.torch_nan = torch;
        const DequantResult out = run_dequant(a, Isa::kScalar);
        uint64_t nans = 0;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) {
            const uint8_t code = codes[static_cast<size_t>(r * cols + c)];
            const float scale = s.grid[static_cast<size_t>(r * nb + c / bc)];
            const bool nan_code = (code & 0x7F) == 0x7F;
            nans += nan_code;
            const float product = fp8_e4m3fn_to_f32(code) * scale;
            const size_t i = static_cast<size_t>(transpose ? c * a.dst_ld + r : r * a.dst_ld + c);
            if (f32) {
              uint32_t want = std::bit_cast<uint32_t>(product);
              if (nan_code) want = (torch ? 0x7FF00000u : 0x7FC00000u) | (code & 0x80u) << 24;
              uint32_t got;
              std::memcpy(&got, &out.bytes[i * 4], 4);
              ASSERT_EQ(got, want) << r << "," << c;
            } else {
              const uint16_t want =
                  torch && std::isnan(product) ? uint16_t{0xFFFF} : f32_to_bf16_rne(product);
              uint16_t got;
              std::memcpy(&got, &out.bytes[i * 2], 2);
              ASSERT_EQ(got, want) << r << "," << c;
              if (!torch) {
                ASSERT_EQ(got, numerics::dequant_fp8_to_bf16(code, scale));
              }
            }
          }
        EXPECT_EQ(out.nans, nans);
      }

  // Quantizers and block amax.
  const auto src = quant_inputs(static_cast<size_t>(rows * cols), rng);
  for (bool transpose : {false, true})
    for (auto mode : {QuantArgs::kTorchCast, QuantArgs::kSaturating}) {
      QuantArgs q;
      q.src = src.data();
      q.rows = transpose ? cols : rows;
      q.cols = transpose ? rows : cols;
      q.src_ld = cols;
      q.transpose = transpose;
      q.dst_ld = q.cols;
      q.mode = mode;
      Scales qs = make_scales(q.rows, (q.cols + bc - 1) / bc, rng);
      q.row_scale = qs.rows.data();
      q.block_cols = bc;
      const auto out = run_quant(q, Isa::kScalar);
      for (int64_t r = 0; r < q.rows; ++r)
        for (int64_t c = 0; c < q.cols; ++c) {
          const float x = bf16_to_f32(transpose ? src[static_cast<size_t>(c * cols + r)]
                                                : src[static_cast<size_t>(r * cols + c)]);
          const uint8_t want =
              mode == QuantArgs::kTorchCast
                  ? numerics::f32_to_fp8_e4m3fn_torch(x)
                  : numerics::f32_to_fp8_e4m3fn_saturating(x / q.row_scale[r][c / bc]);
          ASSERT_EQ(out[static_cast<size_t>(r * q.dst_ld + c)], want) << r << "," << c;
        }
    }
  for (bool transpose : {false, true}) {
    const int64_t lr = transpose ? cols : rows, lc = transpose ? rows : cols;
    const int64_t br = 16, nbr = (lr + br - 1) / br, nbc = (lc + bc - 1) / bc;
    std::vector<float> want(static_cast<size_t>(nbr * nbc), 0.0f);
    for (int64_t r = 0; r < lr; ++r)
      for (int64_t c = 0; c < lc; ++c) {
        const float x = bf16_to_f32(transpose ? src[static_cast<size_t>(c * cols + r)]
                                              : src[static_cast<size_t>(r * cols + c)]);
        float& m = want[static_cast<size_t>((r / br) * nbc + c / bc)];
        if (std::isfinite(x)) m = std::max(m, std::fabs(x));
      }
    const auto got = run_amax(src, lr, lc, cols, transpose, br, bc,
                              std::vector<float>(want.size(), 0.0f), nbc, Isa::kScalar);
    EXPECT_EQ(0, std::memcmp(got.data(), want.data(), want.size() * 4));
  }
}

TEST(KernelsDispatch, IsaSelectionAndArgumentChecks) {
  EXPECT_TRUE(isa_available(Isa::kScalar));
  EXPECT_TRUE(isa_available(best_isa()));
  EXPECT_STREQ(isa_name(Isa::kAvx512), "avx512");
  EXPECT_STREQ(isa_name(Isa::kAvx2), "avx2");
  EXPECT_STREQ(isa_name(Isa::kScalar), "scalar");
  uint8_t code = 0x38;  // 1.0
  uint16_t out = 0;
  DequantArgs a;
  a.src = &code;
  a.rows = 1;
  a.cols = 1;
  a.src_ld = 1;
  a.dst = &out;
  a.dst_ld = 1;
  EXPECT_EQ(dequant_fp8(a), 0u);
  EXPECT_EQ(out, 0x3F80);
  a.src_ld = 0;
  EXPECT_THROW(dequant_fp8(a), std::invalid_argument);
  a.src_ld = 1;
  float scale = 2.0f;
  const float* row = &scale;
  a.row_scale = &row;
  a.block_cols = 0;
  EXPECT_THROW(dequant_fp8(a), std::invalid_argument);
  a.rows = 0;
  EXPECT_EQ(dequant_fp8(a), 0u);  // empty: nothing to check or do
  QuantArgs q;
  q.src = &out;
  q.rows = 1;
  q.cols = 1;
  q.src_ld = 1;
  q.dst = &code;
  q.dst_ld = 1;
  q.mode = QuantArgs::kSaturating;
  EXPECT_THROW(quant_bf16_to_fp8(q), std::invalid_argument);  // saturating needs scales
}

// MOECKPT_ISA: unset or empty runs the CPU's best, a known name only ever lowers it, and any
// other value is refused with a message naming the variable, the value and the accepted ones.
TEST(KernelsDispatch, IsaFromTheEnvironment) {
  EXPECT_EQ(isa_from_env(nullptr, Isa::kAvx512), Isa::kAvx512);
  EXPECT_EQ(isa_from_env("", Isa::kAvx2), Isa::kAvx2);
  EXPECT_EQ(isa_from_env("scalar", Isa::kAvx512), Isa::kScalar);
  EXPECT_EQ(isa_from_env("avx2", Isa::kAvx512), Isa::kAvx2);
  EXPECT_EQ(isa_from_env("avx512", Isa::kAvx2), Isa::kAvx2);  // never above the CPU's
  EXPECT_EQ(isa_from_env("avx512", Isa::kAvx512), Isa::kAvx512);
  for (const char* bad : {"foo", "AVX2", "avx2 ", "sse4"}) {
    try {
      isa_from_env(bad, Isa::kAvx2);
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      const std::string m = e.what();
      EXPECT_NE(m.find(std::string("MOECKPT_ISA=\"") + bad + "\""), std::string::npos) << m;
      EXPECT_NE(m.find("expected scalar, avx2 or avx512"), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
  }
}

}  // namespace
}  // namespace moeckpt::kernels
