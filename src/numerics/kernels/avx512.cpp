// AVX-512 (F, BW, VL) kernels, built with per-file -mavx512* flags and called only after a runtime
// check. Bit-exact with the scalar reference: FP8 decodes exactly (through FP16), the product is
// one vmulps (-ffp-contract=off; there is no add to fuse with anyway), BF16 rounding is integer
// RNE. Ragged edges use masked loads and stores, so every element goes through the same SIMD code.
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized on their own _mm512_undefined_*()
// placeholders (GCC PR 105593); nothing here reads an undefined value.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif

#include <cstdint>

#include "numerics/kernels/kernels_internal.hpp"

namespace moeckpt::kernels::detail {
namespace {

#define MOECKPT_INLINE inline __attribute__((always_inline))

MOECKPT_INLINE __m512i set1(uint32_t v) {
  return _mm512_set1_epi32(static_cast<int>(v));
}

MOECKPT_INLINE __mmask16 lanes16(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

MOECKPT_INLINE __mmask32 lanes32(int64_t n) {
  return n >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << n) - 1u);
}

// Transposes a 16x16 matrix of 32-bit elements held as 16 rows.
MOECKPT_INLINE void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // r[4i + j], 128-bit lane L: rows 4i..4i+3 of column 4L + j.
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x88);
    t[4 + j] = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xDD);
    t[8 + j] = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x88);
    t[12 + j] = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xDD);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0xDD);
    r[4 + j] = _mm512_shuffle_i32x4(t[4 + j], t[12 + j], 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(t[4 + j], t[12 + j], 0xDD);
  }
}

// Walks 16-lane column chunks in increasing order and yields each chunk's scales; the block index
// advances by addition, since a 64-bit division per chunk would cost more than the chunk itself.
struct Blocks {
  int64_t bc, last, b = 0, bend;
  bool uniform = true;
  __m512i idx = _mm512_setzero_si512();  // per-lane block offset from b, only when !uniform

  Blocks(int64_t block_cols, int64_t cols) : bc(block_cols), last(cols - 1), bend(block_cols) {}
  // Restarts the walk at column c (one division, once per row or strip).
  void start(int64_t c) {
    b = c / bc;
    bend = (b + 1) * bc;
  }
  void at(int64_t c) {
    while (c >= bend) {
      ++b;
      bend += bc;
    }
    const int64_t hi = c + 15 < last ? c + 15 : last;
    uniform = hi < bend;
    if (!uniform) {
      // Straddles a block boundary (block_cols not a multiple of 16): gather per lane. Lanes past
      // the last column reuse its block so the gather never leaves the scale row.
      alignas(64) int32_t v[16];
      for (int i = 0; i < 16; ++i)
        v[i] = static_cast<int32_t>((c + i < last ? c + i : last) / bc - b);
      idx = _mm512_load_si512(v);
    }
  }
  MOECKPT_INLINE __m512 scale(const float* row) const {
    return uniform ? _mm512_set1_ps(row[b]) : _mm512_i32gather_ps(idx, row + b, 4);
  }
};

struct DequantCtx {
  __m512i nan_f32;                        // F32 result of a NaN code, before the sign
  __m512i nan_bf16;                       // BF16 result of a NaN product, in the high half
  __m512i nans = _mm512_setzero_si512();  // NaN codes seen, per lane
  // Every scale is finite, so only a NaN code can make a NaN product: tiles run without any NaN
  // handling and are redone exactly in the (in real checkpoints absent) case of a NaN code.
  bool fast;

  explicit DequantCtx(const DequantArgs& a)
      : nan_f32(set1(a.torch_nan ? 0x7FF00000u : 0x7FC00000u)),
        nan_bf16(set1(a.torch_nan ? 0xFFFF0000u : 0x7FC00000u)),
        fast(scales_finite(a)) {}
  static bool scales_finite(const DequantArgs& a) {
    const int64_t nb = a.cols / a.block_cols + (a.cols % a.block_cols != 0);  // no overflow
    for (int64_t r = 0; r < a.rows; ++r)
      for (int64_t b = 0; b < nb; ++b)
        if (!__builtin_isfinite(a.row_scale[r][b])) return false;
    return true;
  }
  uint64_t take() {
    const uint64_t n = static_cast<uint64_t>(_mm512_reduce_add_epi64(
        _mm512_add_epi64(_mm512_cvtepu32_epi64(_mm512_castsi512_si256(nans)),
                         _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(nans, 1)))));
    nans = _mm512_setzero_si512();
    return n;
  }
};

// 16 FP8 codes -> F32 product bits (F32) or the rounded BF16 in each lane's high half. Exact:
// counts and patches NaN codes and NaN products. Fast (ctx.fast only): no NaN handling at all,
// NaN codes are only reported in `seen` so the caller can redo the work exactly.
template <bool F32, bool Exact>
MOECKPT_INLINE __m512i dequant16(DequantCtx& x, __m128i codes, __m512 scale, __mmask16& seen) {
  // E4M3 s.eeee.mmm -> FP16 s.0eeee.mmm0000000: same fields one exponent bit wider, so the FP16
  // value (subnormals included, which vcvtph2ps converts exactly whatever MXCSR says) is the E4M3
  // value times 2^-8. NaN codes become +-1.875 here.
  const __m256i c = _mm256_cvtepu8_epi16(codes);
  const __m256i h = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(c, 8), 1),
                                     _mm256_set1_epi16(static_cast<int16_t>(0xBF80)));
  const __mmask16 nan =
      _mm256_cmpeq_epi16_mask(_mm256_or_si256(c, _mm256_set1_epi16(0x80)), _mm256_set1_epi16(0xFF));
  const __m512 f = _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.0f));  // exact
  const __m512 p = _mm512_mul_ps(f, scale);
  const __m512i b = _mm512_castps_si512(p);
  if constexpr (!Exact) {
    seen |= nan;
    if constexpr (F32) return b;
  } else {
    x.nans = _mm512_mask_add_epi32(x.nans, nan, x.nans, set1(1));
    // A NaN code gets its fixed pattern with the code's sign: (f & sign) | nan_f32.
    if constexpr (F32)
      return _mm512_mask_mov_epi32(
          b, nan,
          _mm512_ternarylogic_epi32(_mm512_castps_si512(f), set1(0x80000000u), x.nan_f32, 0xEA));
  }
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), set1(1));
  const __m512i r = _mm512_add_epi32(_mm512_add_epi32(b, set1(0x7FFF)), lsb);
  if constexpr (!Exact) return r;
  return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(p, p, _CMP_UNORD_Q) | nan, x.nan_bf16);
}

template <bool Full>
MOECKPT_INLINE __m128i load_codes(const uint8_t* p, __mmask16 m) {
  if constexpr (Full) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm_maskz_loadu_epi8(m, p);
}

// One row's columns [c, c + 16 * N) (N = 1 or 2; the last ones masked by m) -> 16 * N outputs.
template <bool F32, bool Full, int N>
MOECKPT_INLINE void row_chunk(DequantCtx& x, Blocks& blk, const uint8_t* src, const float* sr,
                              int64_t c, __mmask16 m, __m512i v[N]) {
  // Named scales rather than an array, which GCC may spill (see avx2.cpp).
  blk.at(c);
  const __m512 s0 = blk.scale(sr);
  __m512 s1 = s0;
  if constexpr (N == 2) {
    blk.at(c + 16);
    s1 = blk.scale(sr);
  }
  __mmask16 seen = 0;
  if (x.fast) {
    v[0] = dequant16<F32, false>(x, load_codes<Full>(src + c, m), s0, seen);
    if constexpr (N == 2)
      v[1] = dequant16<F32, false>(x, load_codes<Full>(src + c + 16, m), s1, seen);
    if (!seen) return;
  }
  v[0] = dequant16<F32, true>(x, load_codes<Full>(src + c, m), s0, seen);
  if constexpr (N == 2) v[1] = dequant16<F32, true>(x, load_codes<Full>(src + c + 16, m), s1, seen);
}

template <bool F32>
uint64_t dequant_rows(const DequantArgs& a) {
  DequantCtx x(a);
  Blocks blk(a.block_cols, a.cols);
  // Odd 16-bit halves of two vectors: the BF16 results of 32 lanes in order.
  const __m512i odd =
      _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27,
                       25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  uint64_t nans = 0;
  __m512i v[2];
  for (int64_t r = 0; r < a.rows; ++r) {
    const uint8_t* src = a.src + r * a.src_ld;
    const float* sr = a.row_scale[r];
    blk.start(0);
    int64_t c = 0;
    if constexpr (F32) {
      float* dst = static_cast<float*>(a.dst) + r * a.dst_ld;
      for (; c + 16 <= a.cols; c += 16) {
        row_chunk<true, true, 1>(x, blk, src, sr, c, 0, v);
        _mm512_storeu_si512(dst + c, v[0]);
      }
      if (c < a.cols) {
        const __mmask16 m = lanes16(a.cols - c);
        row_chunk<true, false, 1>(x, blk, src, sr, c, m, v);
        _mm512_mask_storeu_epi32(dst + c, m, v[0]);
      }
    } else {
      uint16_t* dst = static_cast<uint16_t*>(a.dst) + r * a.dst_ld;
      for (; c + 32 <= a.cols; c += 32) {
        row_chunk<false, true, 2>(x, blk, src, sr, c, 0, v);
        _mm512_storeu_si512(dst + c, _mm512_permutex2var_epi16(v[0], odd, v[1]));
      }
      for (; c < a.cols; c += 16) {
        const __mmask16 m = lanes16(a.cols - c);
        row_chunk<false, false, 1>(x, blk, src, sr, c, m, v);
        _mm256_mask_storeu_epi16(dst + c, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(v[0], 16)));
      }
    }
    if ((r & 1023) == 1023) nans += x.take();  // keep the 32-bit lane counters far from overflow
  }
  return nans + x.take();
}

// Transposed tiles of 16 columns. BF16: 32 rows, rows 2k and 2k+1 sharing 32-bit lanes (low and
// high half), so one 16x16 transpose of 32-bit lanes gives each column 32 consecutive rows = one
// 64-byte store. F32: 16 rows.
template <bool F32, bool Full, bool Exact>
MOECKPT_INLINE __mmask16 tile_lanes(DequantCtx& x, const DequantArgs& a, const Blocks& blk,
                                    int64_t r0, int64_t c0, int64_t nr, __mmask16 cm,
                                    __m512i p[16]) {
  __mmask16 seen = 0;
  for (int k = 0; k < 16; ++k) {
    __m512i v[2];
    for (int h = 0; h < (F32 ? 1 : 2); ++h) {
      const int64_t i = F32 ? k : 2 * k + h;
      if (Full || i < nr) {
        v[h] = dequant16<F32, Exact>(x, load_codes<Full>(a.src + (r0 + i) * a.src_ld + c0, cm),
                                     blk.scale(a.row_scale[r0 + i]), seen);
      } else {
        v[h] = _mm512_setzero_si512();
      }
    }
    if constexpr (F32) {
      p[k] = v[0];
    } else {
      p[k] = _mm512_mask_blend_epi16(0xAAAAAAAAu, _mm512_srli_epi32(v[0], 16), v[1]);
    }
  }
  return seen;
}

template <bool F32, bool Full>
MOECKPT_INLINE void dequant_tile(DequantCtx& x, const DequantArgs& a, const Blocks& blk, int64_t r0,
                                 int64_t c0, int64_t nr, int64_t nc) {
  const __mmask16 cm = lanes16(nc);
  __m512i p[16];
  if (!x.fast || tile_lanes<F32, Full, false>(x, a, blk, r0, c0, nr, cm, p))
    tile_lanes<F32, Full, true>(x, a, blk, r0, c0, nr, cm, p);
  transpose16(p);
  constexpr int64_t esize = F32 ? 4 : 2;
  uint8_t* dst = static_cast<uint8_t*>(a.dst) + (c0 * a.dst_ld + r0) * esize;
  for (int j = 0; j < 16; ++j) {
    uint8_t* d = dst + j * a.dst_ld * esize;
    if (Full) {
      _mm512_storeu_si512(d, p[j]);
    } else if (j < nc) {
      if constexpr (F32) {
        _mm512_mask_storeu_epi32(d, lanes16(nr), p[j]);
      } else {
        _mm512_mask_storeu_epi16(d, lanes32(nr), p[j]);
      }
    }
  }
}

// Output rows (= source columns) per pass. Each pass walks every row strip, so its output rows
// and the current strip's source rows are all the pages it touches: a few hundred stay in the
// TLB, where one pass over all 4096 output rows of an expert slot missed on every store.
constexpr int64_t kColPass = 512;

template <bool F32>
uint64_t dequant_transposed(const DequantArgs& a) {
  constexpr int64_t kTileRows = F32 ? 16 : 32;
  constexpr int64_t kEsize = F32 ? 4 : 2;
  DequantCtx x(a);
  Blocks blk(a.block_cols, a.cols);
  // A narrower first strip when that makes every later 64-byte store cache-line aligned: split
  // stores to scattered lines cost a third of the throughput (large glibc blocks are 16 mod 64).
  const uintptr_t addr = reinterpret_cast<uintptr_t>(a.dst);
  int64_t head = kTileRows;
  if ((a.dst_ld * kEsize) % 64 == 0 && addr % kEsize == 0 && addr % 64 != 0)
    head = static_cast<int64_t>(64 - addr % 64) / kEsize;
  uint64_t nans = 0;
  for (int64_t cp = 0; cp < a.cols; cp += kColPass) {
    const int64_t cend = a.cols - cp < kColPass ? a.cols : cp + kColPass;
    // Within a pass: row strips outer, columns inner, so each source row is read sequentially and
    // each store fills a whole 64-byte run of an output row.
    for (int64_t r0 = 0, nr; r0 < a.rows; r0 += nr) {
      nr = r0 == 0 ? head : kTileRows;
      if (a.rows - r0 < nr) nr = a.rows - r0;
      blk.start(cp);
      for (int64_t c0 = cp; c0 < cend; c0 += 16) {
        const int64_t nc = cend - c0 < 16 ? cend - c0 : 16;
        blk.at(c0);
        if (nr == kTileRows && nc == 16) {
          dequant_tile<F32, true>(x, a, blk, r0, c0, nr, nc);
        } else {
          dequant_tile<F32, false>(x, a, blk, r0, c0, nr, nc);
        }
      }
      nans += x.take();
    }
  }
  return nans;
}

// float32 bits -> E4M3FN codes in the low byte of each lane, mirroring numerics' encoder.
template <bool Torch>
MOECKPT_INLINE __m512i encode16(__m512i x) {
  const __m512i abs = _mm512_and_si512(x, set1(0x7FFFFFFFu));
  // Normal range: rebias (wrapping on purpose, as the scalar code does) and round the 20 dropped
  // bits to nearest even.
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(abs, 20), set1(1));
  const __m512i nrm = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(abs, set1(0x7FFFFu - (120u << 23))), odd), 20);
  // Below 2^-6: the float adder rounds to the 2^-9 grid of 2^14 + x.
  const __m512 sum = _mm512_add_ps(_mm512_castsi512_ps(abs), _mm512_set1_ps(0x1p14f));
  const __m512i sub = _mm512_sub_epi32(_mm512_castps_si512(sum), set1(141u << 23));
  __m512i code = _mm512_mask_mov_epi32(nrm, _mm512_cmplt_epi32_mask(abs, set1(121u << 23)), sub);
  if constexpr (Torch) {
    code = _mm512_mask_mov_epi32(code, _mm512_cmpge_epi32_mask(abs, set1(0x43F00000u)), set1(0x7F));
  } else {
    code = _mm512_mask_mov_epi32(code, _mm512_cmpgt_epi32_mask(abs, set1(0x43E00000u)), set1(0x7E));
    code = _mm512_mask_mov_epi32(code, _mm512_cmpgt_epi32_mask(abs, set1(0x7F800000u)), set1(0x7F));
  }
  // code | (sign byte & 0x80)
  return _mm512_ternarylogic_epi32(code, _mm512_srli_epi32(x, 24), set1(0x80), 0xF8);
}

MOECKPT_INLINE __m512i widen_bf16(__m256i v) {
  return _mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16);
}

template <bool Torch>
MOECKPT_INLINE void quant16(__m512i x, const Blocks& blk, const float* sr, uint8_t* dst,
                            __mmask16 m) {
  if constexpr (!Torch) {
    x = _mm512_castps_si512(_mm512_div_ps(_mm512_castsi512_ps(x), blk.scale(sr)));
  }
  _mm_mask_storeu_epi8(dst, m, _mm512_cvtepi32_epi8(encode16<Torch>(x)));
}

template <bool Torch>
void quant_rows(const QuantArgs& a) {
  Blocks blk(a.block_cols, a.cols);
  for (int64_t r = 0; r < a.rows; ++r) {
    const uint16_t* src = a.src + r * a.src_ld;
    uint8_t* dst = a.dst + r * a.dst_ld;
    blk.start(0);
    for (int64_t c = 0; c < a.cols; c += 16) {
      const __mmask16 m = lanes16(a.cols - c);
      blk.at(c);
      quant16<Torch>(widen_bf16(_mm256_maskz_loadu_epi16(m, src + c)), blk, a.row_scale[r], dst + c,
                     m);
    }
  }
}

// Transposed input: 16x16 tiles; the logical row r0 + i is column r0 + i of 16 source rows.
template <bool Torch>
void quant_transposed(const QuantArgs& a) {
  Blocks blk(a.block_cols, a.cols);
  // Passes over kColPass logical columns (= source rows) keep the pages touched few (see
  // dequant_transposed).
  for (int64_t cp = 0; cp < a.cols; cp += kColPass) {
    const int64_t cend = a.cols - cp < kColPass ? a.cols : cp + kColPass;
    for (int64_t r0 = 0; r0 < a.rows; r0 += 16) {
      const int64_t nr = a.rows - r0 < 16 ? a.rows - r0 : 16;
      const __mmask16 rm = lanes16(nr);
      blk.start(cp);
      for (int64_t c0 = cp; c0 < cend; c0 += 16) {
        const int64_t nc = cend - c0 < 16 ? cend - c0 : 16;
        const __mmask16 cm = lanes16(nc);
        blk.at(c0);
        __m512i t[16];
        for (int j = 0; j < 16; ++j)
          t[j] = j < nc ? widen_bf16(_mm256_maskz_loadu_epi16(rm, a.src + (c0 + j) * a.src_ld + r0))
                        : _mm512_setzero_si512();
        transpose16(t);
        for (int i = 0; i < nr; ++i)
          quant16<Torch>(t[i], blk, a.row_scale[r0 + i], a.dst + (r0 + i) * a.dst_ld + c0, cm);
      }
    }
  }
}

}  // namespace

uint64_t dequant_avx512(const DequantArgs& a) {
  if (a.transpose) return a.dst_f32 ? dequant_transposed<true>(a) : dequant_transposed<false>(a);
  return a.dst_f32 ? dequant_rows<true>(a) : dequant_rows<false>(a);
}

void quant_avx512(const QuantArgs& a) {
  const bool torch = a.mode == QuantArgs::kTorchCast;
  if (a.transpose) {
    torch ? quant_transposed<true>(a) : quant_transposed<false>(a);
  } else {
    torch ? quant_rows<true>(a) : quant_rows<false>(a);
  }
}

void amax_avx512(const AmaxArgs& a) {
  // Reduce the source matrix (whatever the logical transpose) down its rows into one int16 lane
  // per source column: BF16 magnitude bits order like the values, and -1 marks "no finite value".
  // Each group of source rows then folds into the amax row or column it belongs to.
  const int64_t srows = a.transpose ? a.cols : a.rows;
  const int64_t scols = a.transpose ? a.rows : a.cols;
  const int64_t group = a.transpose ? a.block_cols : a.block_rows;
  const int64_t seg = a.transpose ? a.block_rows : a.block_cols;
  int16_t* acc = new int16_t[static_cast<size_t>((scols + 31) & ~int64_t{31})];
  const __m512i minus1 = _mm512_set1_epi16(-1);
  for (int64_t g0 = 0; g0 < srows; g0 += group) {
    const int64_t g1 = srows - g0 < group ? srows : g0 + group;
    for (int64_t c = 0; c < scols; c += 32) _mm512_storeu_si512(acc + c, minus1);
    for (int64_t r = g0; r < g1; ++r) {
      const uint16_t* row = a.src + r * a.src_ld;
      for (int64_t c = 0; c < scols; c += 32) {
        const __mmask32 m = lanes32(scols - c);
        __m512i v =
            _mm512_and_si512(_mm512_maskz_loadu_epi16(m, row + c), _mm512_set1_epi16(0x7FFF));
        v = _mm512_mask_mov_epi16(v, _mm512_cmpgt_epi16_mask(v, _mm512_set1_epi16(0x7F7F)), minus1);
        _mm512_storeu_si512(acc + c, _mm512_max_epi16(_mm512_loadu_si512(acc + c), v));
      }
    }
    fold_column_maxima(a, acc, scols, seg, g0 / group);
  }
  delete[] acc;
}

}  // namespace moeckpt::kernels::detail
