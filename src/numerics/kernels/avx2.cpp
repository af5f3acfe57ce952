// AVX2 + F16C kernels, built with per-file -mavx2 -mf16c (no -mfma: nothing here may fuse) and
// called only after a runtime check. Same arithmetic as the AVX-512 file on 8 lanes; ragged edges
// go to the scalar reference.
#include <immintrin.h>

#include <cstdint>

#include "numerics/kernels/kernels_internal.hpp"

namespace moeckpt::kernels::detail {
namespace {

#define MOECKPT_INLINE inline __attribute__((always_inline))

MOECKPT_INLINE __m256i set1(uint32_t v) {
  return _mm256_set1_epi32(static_cast<int>(v));
}

// Transposes an 8x8 matrix of 32-bit elements held as 8 rows.
MOECKPT_INLINE void transpose8(__m256i r[8]) {
  __m256i t[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 2; ++g) {
    r[4 * g + 0] = _mm256_unpacklo_epi64(t[4 * g + 0], t[4 * g + 2]);
    r[4 * g + 1] = _mm256_unpackhi_epi64(t[4 * g + 0], t[4 * g + 2]);
    r[4 * g + 2] = _mm256_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    r[4 * g + 3] = _mm256_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  // r[4g + j], 128-bit lane L: rows 4g..4g+3 of column 4L + j.
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm256_permute2x128_si256(r[j], r[4 + j], 0x20);
    t[4 + j] = _mm256_permute2x128_si256(r[j], r[4 + j], 0x31);
  }
  for (int j = 0; j < 8; ++j) r[j] = t[j];
}

// Walks 8-lane column chunks in increasing order and yields each chunk's scales (see avx512.cpp).
struct Blocks {
  int64_t bc, last, b = 0, bend;
  bool uniform = true;
  __m256i idx = _mm256_setzero_si256();

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
    const int64_t hi = c + 7 < last ? c + 7 : last;
    uniform = hi < bend;
    if (!uniform) {
      alignas(32) int32_t v[8];
      for (int i = 0; i < 8; ++i)
        v[i] = static_cast<int32_t>((c + i < last ? c + i : last) / bc - b);
      idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(v));
    }
  }
  MOECKPT_INLINE __m256 scale(const float* row) const {
    return uniform ? _mm256_set1_ps(row[b]) : _mm256_i32gather_ps(row + b, idx, 4);
  }
};

struct DequantCtx {
  __m256i nan_f32;
  __m256i nan_bf16;
  __m256i nans = _mm256_setzero_si256();  // NaN codes seen, per lane
  bool fast;  // every scale finite: NaN handling only where a NaN code shows up (see avx512.cpp)

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
    alignas(32) uint32_t v[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(v), nans);
    nans = _mm256_setzero_si256();
    uint64_t n = 0;
    for (uint32_t x : v) n += x;
    return n;
  }
};

// 8 FP8 codes, zero-extended to 16 bits.
MOECKPT_INLINE __m128i load8(const uint8_t* p) {
  return _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// 8 FP8 codes -> F32 product bits or the rounded BF16 in each lane's high half. Exact: counts and
// patches NaN codes and NaN products. Fast: no NaN handling, NaN-code lanes only OR-ed into seen.
template <bool F32, bool Exact>
MOECKPT_INLINE __m256i dequant8(DequantCtx& x, __m128i c, __m256 scale, __m128i& seen) {
  // E4M3 s.eeee.mmm -> FP16 s.0eeee.mmm0000000, whose value is exactly the E4M3 value times 2^-8
  // (see avx512.cpp). NaN codes become +-1.875 here.
  const __m128i h = _mm_and_si128(_mm_srai_epi16(_mm_slli_epi16(c, 8), 1),
                                  _mm_set1_epi16(static_cast<int16_t>(0xBF80)));
  const __m128i nan16 =
      _mm_cmpeq_epi16(_mm_or_si128(c, _mm_set1_epi16(0x80)), _mm_set1_epi16(0xFF));
  const __m256 f = _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0f));  // exact
  const __m256 p = _mm256_mul_ps(f, scale);
  const __m256i b = _mm256_castps_si256(p);
  __m256i nan = _mm256_setzero_si256();
  if constexpr (!Exact) {
    seen = _mm_or_si128(seen, nan16);
    if constexpr (F32) return b;
  } else {
    nan = _mm256_cvtepi16_epi32(nan16);
    x.nans = _mm256_sub_epi32(x.nans, nan);
    if constexpr (F32) {
      const __m256 fixed = _mm256_or_ps(_mm256_and_ps(f, _mm256_castsi256_ps(set1(0x80000000u))),
                                        _mm256_castsi256_ps(x.nan_f32));
      return _mm256_castps_si256(_mm256_blendv_ps(p, fixed, _mm256_castsi256_ps(nan)));
    }
  }
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), set1(1));
  const __m256i r = _mm256_add_epi32(_mm256_add_epi32(b, set1(0x7FFF)), lsb);
  if constexpr (!Exact) return r;
  // NaN codes are not NaN products here, so their lanes join explicitly.
  const __m256i pnan = _mm256_or_si256(_mm256_castps_si256(_mm256_cmp_ps(p, p, _CMP_UNORD_Q)), nan);
  return _mm256_blendv_epi8(r, x.nan_bf16, pnan);
}

MOECKPT_INLINE bool none(__m128i v) {
  return _mm_testz_si128(v, v);
}

// One row's columns [c, c + 8 * N) -> 8 * N outputs (N = 1 or 2).
template <bool F32, int N>
MOECKPT_INLINE void row_chunk(DequantCtx& x, Blocks& blk, const uint8_t* src, const float* sr,
                              int64_t c, __m256i v[N]) {
  // Named scales rather than an array: GCC spilled the array and stalled on reloading it.
  blk.at(c);
  const __m256 s0 = blk.scale(sr);
  __m256 s1 = s0;
  if constexpr (N == 2) {
    blk.at(c + 8);
    s1 = blk.scale(sr);
  }
  __m128i seen = _mm_setzero_si128();
  if (x.fast) {
    v[0] = dequant8<F32, false>(x, load8(src + c), s0, seen);
    if constexpr (N == 2) v[1] = dequant8<F32, false>(x, load8(src + c + 8), s1, seen);
    if (none(seen)) return;
  }
  v[0] = dequant8<F32, true>(x, load8(src + c), s0, seen);
  if constexpr (N == 2) v[1] = dequant8<F32, true>(x, load8(src + c + 8), s1, seen);
}

// High halves of two 8-lane vectors -> 16 BF16 in order.
MOECKPT_INLINE __m256i pack_hi16(__m256i a, __m256i b) {
  const __m256i p = _mm256_packus_epi32(_mm256_srli_epi32(a, 16), _mm256_srli_epi32(b, 16));
  return _mm256_permute4x64_epi64(p, 0xD8);  // packus interleaves the 128-bit lanes
}

template <bool F32>
uint64_t dequant_rows(const DequantArgs& a) {
  DequantCtx x(a);
  Blocks blk(a.block_cols, a.cols);
  uint64_t nans = 0;
  const int64_t main = a.cols & ~int64_t{7};
  __m256i v[2];
  for (int64_t r = 0; r < a.rows; ++r) {
    const uint8_t* src = a.src + r * a.src_ld;
    const float* sr = a.row_scale[r];
    blk.start(0);
    int64_t c = 0;
    if constexpr (F32) {
      float* dst = static_cast<float*>(a.dst) + r * a.dst_ld;
      for (; c < main; c += 8) {
        row_chunk<true, 1>(x, blk, src, sr, c, v);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), v[0]);
      }
    } else {
      uint16_t* dst = static_cast<uint16_t*>(a.dst) + r * a.dst_ld;
      for (; c + 16 <= main; c += 16) {
        row_chunk<false, 2>(x, blk, src, sr, c, v);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), pack_hi16(v[0], v[1]));
      }
      if (c < main) {
        row_chunk<false, 1>(x, blk, src, sr, c, v);
        const __m256i w = _mm256_srli_epi32(v[0], 16);
        const __m128i h =
            _mm_packus_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + c), h);
        c += 8;
      }
    }
    if ((r & 1023) == 1023) nans += x.take();
  }
  nans += x.take();
  if (main < a.cols) nans += dequant_scalar(a, 0, a.rows, main, a.cols);
  return nans;
}

// Transposed tiles of 8 columns. BF16: 16 rows, rows 2k and 2k+1 sharing 32-bit lanes (low, high
// half), so one 8x8 transpose gives each column 16 consecutive rows = one 32-byte store. F32: 8.
template <bool F32, bool Exact>
MOECKPT_INLINE __m128i tile_lanes(DequantCtx& x, const DequantArgs& a, const Blocks& blk,
                                  int64_t r0, int64_t c0, __m256i p[8]) {
  __m128i seen = _mm_setzero_si128();
  for (int k = 0; k < 8; ++k) {
    if constexpr (F32) {
      p[k] = dequant8<true, Exact>(x, load8(a.src + (r0 + k) * a.src_ld + c0),
                                   blk.scale(a.row_scale[r0 + k]), seen);
    } else {
      const int64_t r = r0 + 2 * k;
      const __m256i v0 = dequant8<false, Exact>(x, load8(a.src + r * a.src_ld + c0),
                                                blk.scale(a.row_scale[r]), seen);
      const __m256i v1 = dequant8<false, Exact>(x, load8(a.src + (r + 1) * a.src_ld + c0),
                                                blk.scale(a.row_scale[r + 1]), seen);
      p[k] = _mm256_blend_epi16(_mm256_srli_epi32(v0, 16), v1, 0xAA);
    }
  }
  return seen;
}

template <bool F32>
MOECKPT_INLINE void dequant_tile(DequantCtx& x, const DequantArgs& a, const Blocks& blk, int64_t r0,
                                 int64_t c0) {
  __m256i p[8];
  if (!x.fast || !none(tile_lanes<F32, false>(x, a, blk, r0, c0, p)))
    tile_lanes<F32, true>(x, a, blk, r0, c0, p);
  transpose8(p);
  constexpr int64_t esize = F32 ? 4 : 2;
  uint8_t* dst = static_cast<uint8_t*>(a.dst) + (c0 * a.dst_ld + r0) * esize;
  for (int j = 0; j < 8; ++j)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j * a.dst_ld * esize), p[j]);
}

// Output rows per pass, for the TLB (see avx512.cpp).
constexpr int64_t kColPass = 512;

template <bool F32>
uint64_t dequant_transposed(const DequantArgs& a) {
  constexpr int64_t kTileRows = F32 ? 8 : 16;
  DequantCtx x(a);
  Blocks blk(a.block_cols, a.cols);
  const int64_t rmain = a.rows - a.rows % kTileRows;
  const int64_t cmain = a.cols & ~int64_t{7};
  uint64_t nans = 0;
  for (int64_t cp = 0; cp < cmain; cp += kColPass) {
    const int64_t cend = cmain - cp < kColPass ? cmain : cp + kColPass;
    for (int64_t r0 = 0; r0 < rmain; r0 += kTileRows) {
      blk.start(cp);
      for (int64_t c0 = cp; c0 < cend; c0 += 8) {
        blk.at(c0);
        dequant_tile<F32>(x, a, blk, r0, c0);
      }
      nans += x.take();
    }
  }
  if (cmain < a.cols) nans += dequant_scalar(a, 0, rmain, cmain, a.cols);
  if (rmain < a.rows) nans += dequant_scalar(a, rmain, a.rows, 0, a.cols);
  return nans;
}

// float32 bits -> E4M3FN codes in the low byte of each lane, mirroring numerics' encoder.
template <bool Torch>
MOECKPT_INLINE __m256i encode8(__m256i x) {
  const __m256i abs = _mm256_and_si256(x, set1(0x7FFFFFFFu));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(abs, 20), set1(1));
  const __m256i nrm = _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(abs, set1(0x7FFFFu - (120u << 23))), odd), 20);
  const __m256 sum = _mm256_add_ps(_mm256_castsi256_ps(abs), _mm256_set1_ps(0x1p14f));
  const __m256i sub = _mm256_sub_epi32(_mm256_castps_si256(sum), set1(141u << 23));
  __m256i code = _mm256_blendv_epi8(nrm, sub, _mm256_cmpgt_epi32(set1(121u << 23), abs));
  if constexpr (Torch) {
    code = _mm256_blendv_epi8(code, set1(0x7F), _mm256_cmpgt_epi32(abs, set1(0x43EFFFFFu)));
  } else {
    code = _mm256_blendv_epi8(code, set1(0x7E), _mm256_cmpgt_epi32(abs, set1(0x43E00000u)));
    code = _mm256_blendv_epi8(code, set1(0x7F), _mm256_cmpgt_epi32(abs, set1(0x7F800000u)));
  }
  return _mm256_or_si256(code, _mm256_and_si256(_mm256_srli_epi32(x, 24), set1(0x80)));
}

MOECKPT_INLINE __m256i widen_bf16(const uint16_t* p) {
  return _mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
}

template <bool Torch>
MOECKPT_INLINE void quant8(__m256i x, const Blocks& blk, const float* sr, uint8_t* dst) {
  if constexpr (!Torch) {
    x = _mm256_castps_si256(_mm256_div_ps(_mm256_castsi256_ps(x), blk.scale(sr)));
  }
  const __m256i c = encode8<Torch>(x);
  const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm_packus_epi16(w, w));
}

template <bool Torch>
void quant_rows(const QuantArgs& a) {
  Blocks blk(a.block_cols, a.cols);
  const int64_t main = a.cols & ~int64_t{7};
  for (int64_t r = 0; r < a.rows; ++r) {
    blk.start(0);
    for (int64_t c = 0; c < main; c += 8) {
      blk.at(c);
      quant8<Torch>(widen_bf16(a.src + r * a.src_ld + c), blk, a.row_scale[r],
                    a.dst + r * a.dst_ld + c);
    }
  }
  if (main < a.cols) quant_scalar(a, 0, a.rows, main, a.cols);
}

template <bool Torch>
void quant_transposed(const QuantArgs& a) {
  Blocks blk(a.block_cols, a.cols);
  const int64_t rmain = a.rows & ~int64_t{7};
  const int64_t cmain = a.cols & ~int64_t{7};
  for (int64_t cp = 0; cp < cmain; cp += kColPass) {
    const int64_t cend = cmain - cp < kColPass ? cmain : cp + kColPass;
    for (int64_t r0 = 0; r0 < rmain; r0 += 8) {
      blk.start(cp);
      for (int64_t c0 = cp; c0 < cend; c0 += 8) {
        blk.at(c0);
        __m256i t[8];
        for (int j = 0; j < 8; ++j) t[j] = widen_bf16(a.src + (c0 + j) * a.src_ld + r0);
        transpose8(t);
        for (int i = 0; i < 8; ++i)
          quant8<Torch>(t[i], blk, a.row_scale[r0 + i], a.dst + (r0 + i) * a.dst_ld + c0);
      }
    }
  }
  if (cmain < a.cols) quant_scalar(a, 0, rmain, cmain, a.cols);
  if (rmain < a.rows) quant_scalar(a, rmain, a.rows, 0, a.cols);
}

}  // namespace

uint64_t dequant_avx2(const DequantArgs& a) {
  if (a.transpose) return a.dst_f32 ? dequant_transposed<true>(a) : dequant_transposed<false>(a);
  return a.dst_f32 ? dequant_rows<true>(a) : dequant_rows<false>(a);
}

void quant_avx2(const QuantArgs& a) {
  const bool torch = a.mode == QuantArgs::kTorchCast;
  if (a.transpose) {
    torch ? quant_transposed<true>(a) : quant_transposed<false>(a);
  } else {
    torch ? quant_rows<true>(a) : quant_rows<false>(a);
  }
}

void amax_avx2(const AmaxArgs& a) {
  // Same scheme as amax_avx512: int16 column maxima of each group of source rows (-1: no finite
  // value), then folded per block.
  const int64_t srows = a.transpose ? a.cols : a.rows;
  const int64_t scols = a.transpose ? a.rows : a.cols;
  const int64_t group = a.transpose ? a.block_cols : a.block_rows;
  const int64_t seg = a.transpose ? a.block_rows : a.block_cols;
  const int64_t main = scols & ~int64_t{15};
  int16_t* acc = new int16_t[static_cast<size_t>(scols)];
  for (int64_t g0 = 0; g0 < srows; g0 += group) {
    const int64_t g1 = srows - g0 < group ? srows : g0 + group;
    for (int64_t c = 0; c < scols; ++c) acc[c] = -1;
    for (int64_t r = g0; r < g1; ++r) {
      const uint16_t* row = a.src + r * a.src_ld;
      for (int64_t c = 0; c < main; c += 16) {
        __m256i v = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c)),
                                     _mm256_set1_epi16(0x7FFF));
        // Non-finite (>= 0x7F80) -> all ones = -1.
        v = _mm256_or_si256(v, _mm256_cmpgt_epi16(v, _mm256_set1_epi16(0x7F7F)));
        __m256i* p = reinterpret_cast<__m256i*>(acc + c);
        _mm256_storeu_si256(p, _mm256_max_epi16(_mm256_loadu_si256(p), v));
      }
      for (int64_t c = main; c < scols; ++c) {
        const int16_t v =
            (row[c] & 0x7FFF) > 0x7F7F ? int16_t{-1} : static_cast<int16_t>(row[c] & 0x7FFF);
        acc[c] = v > acc[c] ? v : acc[c];
      }
    }
    fold_column_maxima(a, acc, scols, seg, g0 / group);
  }
  delete[] acc;
}

}  // namespace moeckpt::kernels::detail
