#include "exec/transforms.hpp"

#include "exec/numeric_refusals.hpp"

#include "exec/raw_buffer.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "moeckpt/error.hpp"
#include "moeckpt/kernels.hpp"
#include "moeckpt/mxfp4.hpp"
#include "moeckpt/numerics.hpp"

namespace moeckpt::exec {

float element_to_float(Dtype dtype, const uint8_t* p) {
  switch (dtype) {
    case Dtype::F8_E4M3:
      return numerics::fp8_e4m3fn_to_f32(p[0]);
    case Dtype::BF16:
      return numerics::bf16_to_f32(static_cast<uint16_t>(p[0] | p[1] << 8));
    case Dtype::F16:
      return numerics::f16_to_f32(static_cast<uint16_t>(p[0] | p[1] << 8));
    case Dtype::F32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    default:
      return 0.0f;
  }
}

static bool is_float_dtype(Dtype d) {
  return d == Dtype::F8_E4M3 || d == Dtype::BF16 || d == Dtype::F16 || d == Dtype::F32;
}

std::vector<float> to_floats(const SourceTensor& t, std::span<const uint8_t> bytes) {
  if (!is_float_dtype(t.dtype))
    fail(ErrorKind::kMalformedFile, t.file, t.name,
         "dtype " + std::string(dtype_name(t.dtype)) + " cannot be converted",
         "F8_E4M3, BF16, F16 or F32");
  const size_t size = dtype_size(t.dtype);
  std::vector<float> out(bytes.size() / size);
  for (size_t i = 0; i < out.size(); ++i) out[i] = element_to_float(t.dtype, &bytes[i * size]);
  return out;
}

namespace {

// Scale rows [row0, row1) of a scale tensor as floats (row0 = first).
struct Scales {
  std::vector<float> values;
  int64_t cols = 0;
  int64_t first = 0;
};

// Reads only rows [row0, row1) (a rank loading some rows reads just the scale rows they use).
// `check`: refuse zero/negative/non-finite entries in the rows and columns blocks use (extra
// trailing rows/columns are ignored, whatever they hold).
Scales load_scales(const TensorSource& source, const SourceTensor& s, bool check, int64_t used_rows,
                   int64_t used_cols, int64_t row0, int64_t row1) {
  Scales out;
  out.cols = static_cast<int64_t>(s.shape.at(1));
  out.first = row0;
  const uint64_t row_bytes = static_cast<uint64_t>(out.cols) * dtype_size(s.dtype);
  std::vector<uint8_t> bytes(static_cast<size_t>(row1 - row0) * row_bytes);
  source.read(s, static_cast<uint64_t>(row0) * row_bytes, bytes);
  out.values = to_floats(s, bytes);
  if (check)
    for (size_t i = 0; i < out.values.size(); ++i) {
      const int64_t r = row0 + static_cast<int64_t>(i) / out.cols;
      const int64_t c = static_cast<int64_t>(i) % out.cols;
      float v = out.values[i];
      if (r < used_rows && c < used_cols && !is_usable_scale(v)) refuse_scale(s, r, c, v);
    }
  return out;
}

}  // namespace

RowScales row_scales(const TensorSource& source, const DequantInput& in, int64_t row0,
                     int64_t rows) {
  RowScales rs;
  rs.row.assign(static_cast<size_t>(rows), nullptr);
  if (!in.scale || rows <= 0) return rs;
  const ScaleRef& s = *in.scale;
  rs.block_cols = s.block_cols;
  const int64_t used_cols = ceil_div(static_cast<int64_t>(in.weight->shape.at(1)), s.block_cols);
  const size_t n = s.tensors.size();
  rs.values.resize(n);
  rs.cols.assign(n, 0);
  // The rows blocks use: given per tensor, or the grid's.
  const auto all_rows = static_cast<int64_t>(in.weight->shape.at(0));
  const int64_t grid_rows = s.period_rows > 0
                                ? ceil_div(all_rows, s.period_rows) * s.period_scale_rows
                                : ceil_div(all_rows, s.block_rows);
  // Pass 1: (scale tensor, scale row) of each weight row; pass 2 reads each tensor's span of
  // rows once.
  std::vector<std::pair<size_t, int64_t>> at(static_cast<size_t>(rows));
  if (!s.runs.empty()) {
    auto it = std::upper_bound(s.runs.begin(), s.runs.end(), row0,
                               [](int64_t r, const ScaleRun& run) { return r < run.row1; });
    for (int64_t r = row0; r < row0 + rows; ++r) {
      while (it != s.runs.end() && it->row1 <= r) ++it;
      if (it == s.runs.end() || it->row0 > r || !s.tensors.at(it->tensor))
        fail(ErrorKind::kMalformedFile, in.weight->file, in.weight->name,
             "row " + std::to_string(r) + " has no block scale in the plan");
      at[static_cast<size_t>(r - row0)] = {it->tensor, it->scale_row};
    }
  } else {
    // The scale row of weight row w: one grid, or one grid per period of rows.
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t w = row0 + r;
      at[static_cast<size_t>(r)] = {
          0, s.period_rows <= 0
                 ? w / s.block_rows
                 : (w / s.period_rows) * s.period_scale_rows + (w % s.period_rows) / s.block_rows};
    }
  }
  std::vector<int64_t> lo(n, INT64_MAX), hi(n, -1);
  for (const auto& [t, r] : at) {
    lo[t] = std::min(lo[t], r);
    hi[t] = std::max(hi[t], r + 1);
  }
  std::vector<int64_t> first(n, 0);
  for (size_t i = 0; i < n; ++i) {
    if (hi[i] < 0) continue;
    const SourceTensor& t = *s.tensors[i];
    if (hi[i] > static_cast<int64_t>(t.shape.at(0)))
      fail(ErrorKind::kMalformedFile, t.file, t.name,
           "has " + std::to_string(t.shape.at(0)) + " rows, but weight rows need row " +
               std::to_string(hi[i] - 1),
           "a block scale row for every weight row");
    const int64_t used = i < s.used_rows.size() ? s.used_rows[i] : grid_rows;
    auto sc = load_scales(source, t, s.check_values, used, used_cols, lo[i], hi[i]);
    rs.values[i] = std::move(sc.values);
    rs.cols[i] = sc.cols;
    first[i] = sc.first;
  }
  for (size_t r = 0; r < at.size(); ++r) {
    const auto [t, sr] = at[r];
    rs.row[r] = &rs.values[t][static_cast<size_t>((sr - first[t]) * rs.cols[t])];
  }
  rs.source = std::move(at);
  return rs;
}

namespace {

// A scale so large that its product with a code of its block is not finite in `out`: refused,
// naming the scale entry (ScaleRef::check_products; the rows of a block in this task decide).
void refuse_overflowing_products(const DequantInput& in, const RowScales& rs, const uint8_t* codes,
                                 int64_t row0, int64_t rows, int64_t cols, Dtype out) {
  const float max_out = out == Dtype::F32 ? std::numeric_limits<float>::max()
                                          : numerics::bf16_to_f32(0x7F7F);  // BF16 max
  const float safe = max_out / 448.0f;
  const int64_t bc = rs.block_cols;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b * bc < cols; ++b) {
      const float v = rs.row[static_cast<size_t>(r)][b];
      if (!(v > safe)) continue;
      float largest = 0.0f;
      for (int64_t c = b * bc; c < std::min(cols, (b + 1) * bc); ++c) {
        const uint8_t code = codes[r * cols + c];
        if ((code & 0x7F) != 0x7F)
          largest = std::max(largest, std::fabs(numerics::fp8_e4m3fn_to_f32(code)));
      }
      const float product = largest * v;  // the dequantization's one float32 multiply
      const bool finite = out == Dtype::F32
                              ? std::isfinite(product)
                              : (numerics::f32_to_bf16_rne(product) & 0x7F80) != 0x7F80;
      if (finite) continue;
      const auto [t, sr] = rs.source.at(static_cast<size_t>(r));
      refuse_scale_overflow(*in.scale->tensors.at(t), sr, b, v, largest, *in.weight, row0 + r,
                            product, out);
    }
}

}  // namespace

namespace {

// The first FP8 NaN code (0x7F / 0xFF) of `codes` (rows from row0, `cols` wide), refused.
void refuse_nan_codes(const SourceTensor& w, std::span<const uint8_t> codes, int64_t row0,
                      int64_t cols) {
  for (size_t i = 0; i < codes.size(); ++i)
    if ((codes[i] & 0x7F) == 0x7F)
      refuse_nan(
          w,
          element_position(row0 + static_cast<int64_t>(i) / cols, static_cast<int64_t>(i) % cols),
          codes[i]);
}

}  // namespace

void dequant_fp8_into(const TensorSource& source, const DequantInput& in, int64_t row0,
                      int64_t row1, Dtype out, uint8_t* dst, int64_t dst_ld, bool transpose) {
  const SourceTensor& w = *in.weight;
  const int64_t cols = static_cast<int64_t>(w.shape.at(1));
  if (row1 < 0) row1 = static_cast<int64_t>(w.shape.at(0));
  const int64_t rows = row1 - row0;
  RawBuffer<uint8_t> codes(static_cast<size_t>(rows * cols));
  source.read(w, static_cast<uint64_t>(row0 * cols), codes.span());
  RowScales rs = row_scales(source, in, row0, rows);
  if (in.scale && in.scale->check_products)
    refuse_overflowing_products(in, rs, codes.data(), row0, rows, cols, out);
  if (!dst) {  // checking only (ExecOptions::check_only): the same refusals, no conversion
    if (in.nan == NanPolicy::kRefuse) refuse_nan_codes(w, codes.span(), row0, cols);
    return;
  }
  kernels::DequantArgs a;
  a.src = codes.data();
  a.rows = rows;
  a.cols = cols;
  a.src_ld = cols;
  a.row_scale = in.scale ? rs.row.data() : nullptr;
  a.block_cols = rs.block_cols;
  a.dst = dst;
  a.dst_ld = dst_ld;
  a.dst_f32 = out == Dtype::F32;
  a.transpose = transpose;
  a.torch_nan = in.nan == NanPolicy::kTorchCompat;
  if (kernels::dequant_fp8(a) && in.nan == NanPolicy::kRefuse)
    refuse_nan_codes(w, codes.span(), row0, cols);
}

namespace {

// One MXFP4 matrix into `dst` as elements of type T (BF16, F16 or F32 bits). Every product is an
// E2M1 value times a power of two, exact (or inf), so the 16 x 256 (code, scale) outputs are
// encoded once per matrix and looked up. Refusals come first, in row-major order, from the scales
// (only scales of 2^126 and up can overflow); then the values are written, for a transposed
// destination a tile of 32 rows at a time so that each output row gets runs of 32 elements.
template <class T>
void mxfp4_rows(const SourceTensor& w, const SourceTensor& s, const uint8_t* packed,
                const uint8_t* scales, int64_t rows, int64_t packed_cols, int64_t blocks, Dtype out,
                NanPolicy nan, bool ldexp, T* dst, int64_t dst_ld, bool transpose) {
  const bool refuse = nan == NanPolicy::kRefuse;
  constexpr int64_t kBytes = numerics::kMxBlock / 2;
  std::vector<T> lut(256 * 16);
  std::array<bool, 256> overflows{};
  for (int sc = 0; sc < 256; ++sc) {
    std::array<float, 16> value{};
    for (uint8_t c = 0; c < 16; ++c) {
      const auto code = static_cast<uint8_t>(sc);
      value[c] = ldexp ? std::ldexp(numerics::e2m1_to_f32(c), sc - 127)  // exact, or inf
                 : code == numerics::kE8m0Nan
                     ? numerics::e2m1_to_f32(c) * std::numeric_limits<float>::infinity()
                     : numerics::dequant_mxfp4(c, code);
      overflows[static_cast<size_t>(sc)] =
          overflows[static_cast<size_t>(sc)] || !std::isfinite(value[c]);
    }
    encode_products(value, out, nan,
                    reinterpret_cast<uint8_t*>(&lut[static_cast<size_t>(sc) * 16]));
  }
  if (refuse)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t sc = scales[r * blocks + b];
        if (sc == numerics::kE8m0Nan) refuse_e8m0_nan(s, r, b);
        if (!overflows[sc]) continue;
        const uint8_t* in = packed + r * packed_cols + b * kBytes;
        for (int64_t i = 0; i < 2 * kBytes; ++i) {
          const auto code = static_cast<uint8_t>((i & 1) ? in[i / 2] >> 4 : in[i / 2] & 0xF);
          if (!std::isfinite(numerics::dequant_mxfp4(code, sc)))
            refuse_mxfp4_overflow(w, r, b * numerics::kMxBlock + i, numerics::e2m1_to_f32(code),
                                  sc - 127);
        }
      }
  const int64_t cols = blocks * numerics::kMxBlock;
  if (!transpose) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t b = 0; b < blocks; ++b) {
        const T* l = &lut[static_cast<size_t>(scales[r * blocks + b]) * 16];
        const uint8_t* in = packed + r * packed_cols + b * kBytes;
        T* o = dst + r * dst_ld + b * numerics::kMxBlock;
        for (int64_t i = 0; i < kBytes; ++i) {
          o[2 * i] = l[in[i] & 0xF];
          o[2 * i + 1] = l[in[i] >> 4];
        }
      }
    return;
  }
  constexpr int64_t kTile = 32;
  std::vector<T> tile(static_cast<size_t>(kTile * cols));
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int64_t n = std::min(kTile, rows - r0);
    for (int64_t r = 0; r < n; ++r)  // decoded row-major into the tile
      for (int64_t b = 0; b < blocks; ++b) {
        const T* l = &lut[static_cast<size_t>(scales[(r0 + r) * blocks + b]) * 16];
        const uint8_t* in = packed + (r0 + r) * packed_cols + b * kBytes;
        T* o = &tile[static_cast<size_t>(r * cols + b * numerics::kMxBlock)];
        for (int64_t i = 0; i < kBytes; ++i) {
          o[2 * i] = l[in[i] & 0xF];
          o[2 * i + 1] = l[in[i] >> 4];
        }
      }
    for (int64_t c = 0; c < cols; ++c)  // output row c gets this tile's n rows, contiguous
      for (int64_t r = 0; r < n; ++r)
        dst[c * dst_ld + r0 + r] = tile[static_cast<size_t>(r * cols + c)];
  }
}

}  // namespace

void dequant_mxfp4_into(const TensorSource& source, const DequantInput& in, Dtype out, uint8_t* dst,
                        int64_t dst_ld, bool transpose) {
  const SourceTensor& w = *in.weight;
  const SourceTensor& s = *in.mx_scale;
  const auto rows = static_cast<int64_t>(w.shape.at(0));
  const auto packed_cols = static_cast<int64_t>(w.shape.at(1));
  const auto blocks = static_cast<int64_t>(s.shape.at(1));
  RawBuffer<uint8_t> packed(static_cast<size_t>(rows * packed_cols));
  source.read(w, 0, packed.span());
  RawBuffer<uint8_t> scales(static_cast<size_t>(rows * blocks));
  source.read(s, 0, scales.span());
  const bool ldexp = in.mx_ldexp && in.nan == NanPolicy::kTorchCompat;
  if (out == Dtype::F32)
    mxfp4_rows(w, s, packed.data(), scales.data(), rows, packed_cols, blocks, out, in.nan, ldexp,
               reinterpret_cast<uint32_t*>(dst), dst_ld, transpose);
  else
    mxfp4_rows(w, s, packed.data(), scales.data(), rows, packed_cols, blocks, out, in.nan, ldexp,
               reinterpret_cast<uint16_t*>(dst), dst_ld, transpose);
}

std::vector<float> dequant_products(const TensorSource& source, const DequantInput& in,
                                    int64_t row0, int64_t row1) {
  const SourceTensor& w = *in.weight;
  const int64_t all_rows = static_cast<int64_t>(w.shape.at(0));
  const int64_t cols = static_cast<int64_t>(w.shape.at(1));
  if (row1 < 0) row1 = all_rows;
  const int64_t rows = row1 - row0;
  const size_t esize = dtype_size(w.dtype);
  if (!is_float_dtype(w.dtype))
    fail(ErrorKind::kMalformedFile, w.file, w.name,
         "dtype " + std::string(dtype_name(w.dtype)) + " cannot be dequantized",
         "F8_E4M3, BF16, F16 or F32");
  std::vector<uint8_t> bytes(static_cast<size_t>(rows * cols) * esize);
  source.read(w, static_cast<uint64_t>(row0 * cols) * esize, bytes);
  std::vector<float> out(static_cast<size_t>(rows * cols));
  RowScales rs = row_scales(source, in, row0, rows);
  const int64_t block_cols = rs.block_cols;
  const auto& row_scale = rs.row;
  const bool fp8 = w.dtype == Dtype::F8_E4M3;
  for (int64_t r = 0; r < rows; ++r) {
    const float* srow = row_scale[static_cast<size_t>(r)];
    for (int64_t c = 0; c < cols; ++c) {
      const size_t i = static_cast<size_t>(r * cols + c);
      const uint8_t* p = &bytes[i * esize];
      float x = element_to_float(w.dtype, p);
      if (std::isnan(x)) {
        if (in.nan == NanPolicy::kRefuse)
          refuse_nan(w, element_position(row0 + r, c), fp8 ? p[0] : -1);
        // torch widens FP8 NaN to 0x7FF00000 | sign and multiplies, keeping that NaN.
        if (fp8) x = std::bit_cast<float>(0x7FF00000u | (p[0] & 0x80u ? 0x80000000u : 0u));
      }
      const float s = srow ? srow[c / block_cols] : 1.0f;
      out[i] = x * s;  // one float32 multiply: no add to contract with, SSE has no excess precision
    }
  }
  return out;
}

namespace {

// Tiles keep both the rows read and the columns written in cache.
template <class T>
void transpose_tiles(const TensorSource& source, const DequantInput& in, T* dst, int64_t dst_ld,
                     T exponent, T magnitude) {
  const SourceTensor& w = *in.weight;
  const auto rows = static_cast<int64_t>(w.shape.at(0)), cols = static_cast<int64_t>(w.shape.at(1));
  constexpr int64_t kTile = 64;
  std::vector<T> band(static_cast<size_t>(std::min(rows, kTile) * cols));
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int64_t n = std::min(kTile, rows - r0);
    auto bytes = std::as_writable_bytes(std::span<T>(band.data(), static_cast<size_t>(n * cols)));
    source.read(w, static_cast<uint64_t>(r0 * cols) * sizeof(T),
                {reinterpret_cast<uint8_t*>(bytes.data()), bytes.size()});
    if (in.nan == NanPolicy::kRefuse)
      for (int64_t i = 0; i < n * cols; ++i)
        if ((band[static_cast<size_t>(i)] & magnitude) > exponent)
          refuse_nan(w, element_position(r0 + i / cols, i % cols), -1);
    for (int64_t c0 = 0; c0 < cols; c0 += kTile)
      for (int64_t c = c0; c < std::min(cols, c0 + kTile); ++c)
        for (int64_t r = 0; r < n; ++r)
          dst[c * dst_ld + r0 + r] = band[static_cast<size_t>(r * cols + c)];
  }
}

}  // namespace

void transpose_raw_into(const TensorSource& source, const DequantInput& in, uint8_t* dst,
                        int64_t dst_ld) {
  if (in.weight->dtype == Dtype::BF16)
    transpose_tiles<uint16_t>(source, in, reinterpret_cast<uint16_t*>(dst), dst_ld, 0x7F80, 0x7FFF);
  else if (in.weight->dtype == Dtype::F32)
    transpose_tiles<uint32_t>(source, in, reinterpret_cast<uint32_t*>(dst), dst_ld, 0x7F800000u,
                              0x7FFFFFFFu);
  else
    fail(ErrorKind::kInvalidArgument, in.weight->file, in.weight->name,
         "internal: a raw transpose of " + std::string(dtype_name(in.weight->dtype)),
         "BF16 or F32");
}

void encode_products(std::span<const float> products, Dtype out, NanPolicy nan, uint8_t* dst) {
  if (out == Dtype::F32) {
    std::memcpy(dst, products.data(), products.size() * 4);
    return;
  }
  if (out == Dtype::F16) {  // torch's copy_ rule whatever the policy (its NaNs keep their payload)
    for (size_t i = 0; i < products.size(); ++i) {
      const uint16_t h = numerics::f32_to_f16_rne(products[i]);
      dst[2 * i] = static_cast<uint8_t>(h);
      dst[2 * i + 1] = static_cast<uint8_t>(h >> 8);
    }
    return;
  }
  // Any other dtype used to get BF16 bits here, silently (an F16 destination of a load did).
  if (out != Dtype::BF16)
    fail(ErrorKind::kInvalidArgument, "", "",
         "internal: floats encoded as " + std::string(dtype_name(out)), "BF16, F16 or F32");
  for (size_t i = 0; i < products.size(); ++i) {
    uint16_t b = numerics::f32_to_bf16_rne(products[i]);
    // torch's vectorized float->bfloat16 kernels turn every NaN into 0xFFFF.
    if (nan == NanPolicy::kTorchCompat && std::isnan(products[i])) b = 0xFFFF;
    dst[2 * i] = static_cast<uint8_t>(b);
    dst[2 * i + 1] = static_cast<uint8_t>(b >> 8);
  }
}

LoadedMatrix load_matrix(const TensorSource& source, const MatrixView& v, int64_t row0,
                         int64_t row1) {
  const SourceTensor& t = *v.src;
  const size_t esize = dtype_size(t.dtype);
  LoadedMatrix m;
  if (v.slot < 0) {
    const auto all_rows = static_cast<int64_t>(t.shape.empty() ? 1 : t.shape[0]);
    if (row1 < 0) row1 = all_rows;
    m.rows = row1 - row0;
    m.cols = static_cast<int64_t>(t.shape.size() > 1 ? t.shape[1] : 1);
    m.raw.resize(static_cast<size_t>(m.rows * m.cols) * esize);
    source.read(t, static_cast<uint64_t>(row0 * m.cols) * esize, m.raw);
    return m;
  }
  // Grouped [n, R, W]: the view is the transpose of slot[:, col0:col0+cols] -> [cols, R].
  const int64_t R = static_cast<int64_t>(t.shape.at(1));
  const int64_t W = static_cast<int64_t>(t.shape.at(2));
  const uint64_t slot_bytes = static_cast<uint64_t>(R * W) * esize;
  std::vector<uint8_t> slot(slot_bytes);
  source.read(t, static_cast<uint64_t>(v.slot) * slot_bytes, slot);
  m.rows = v.cols;
  m.cols = R;
  m.raw.resize(static_cast<size_t>(m.rows * m.cols) * esize);
  if (esize == 2) {  // BF16, the native dtype: a typed tiled transpose
    const auto* in = reinterpret_cast<const uint16_t*>(slot.data());
    auto* out = reinterpret_cast<uint16_t*>(m.raw.data());
    constexpr int64_t kTile = 32;
    for (int64_t d0 = 0; d0 < R; d0 += kTile)
      for (int64_t j0 = 0; j0 < v.cols; j0 += kTile)
        for (int64_t d = d0; d < std::min(R, d0 + kTile); ++d)
          for (int64_t j = j0; j < std::min(v.cols, j0 + kTile); ++j)
            out[j * R + d] = in[d * W + v.col0 + j];
    return m;
  }
  for (int64_t d = 0; d < R; ++d)
    for (int64_t j = 0; j < v.cols; ++j)
      std::memcpy(&m.raw[static_cast<size_t>(j * R + d) * esize],
                  &slot[static_cast<size_t>(d * W + v.col0 + j) * esize], esize);
  return m;
}

}  // namespace moeckpt::exec
