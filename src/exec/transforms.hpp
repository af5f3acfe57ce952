#pragma once
// The data transforms tasks are made of: exact dequantization (one float32 multiply, then RNE) and
// the two quantizers, on whole matrices. Scalar code built on the reference codecs.
#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "moeckpt/plan.hpp"

namespace moeckpt::exec {

// Values of a floating tensor as float32 (F8_E4M3, F8_E5M2 not supported, BF16, F16, F32).
float element_to_float(Dtype dtype, const uint8_t* p);
std::vector<float> to_floats(const SourceTensor& t, std::span<const uint8_t> bytes);

// out[r][c] = float(w[r][c]) * float(scale for (r, c)) for a 2-D weight; NaN handled per policy.
// Rows [row0, row1) only (row1 < 0: all); only those rows' bytes are read.
std::vector<float> dequant_products(const TensorSource& source, const DequantInput& in,
                                    int64_t row0 = 0, int64_t row1 = -1);

// Per-row pointers into the block scales a weight's rows [row0, row0 + rows) use.
struct RowScales {
  std::vector<std::vector<float>> values;  // per scale tensor, as read
  std::vector<int64_t> cols;
  std::vector<const float*> row;
  std::vector<std::pair<size_t, int64_t>> source;  // per row: (scale tensor, scale row)
  int64_t block_cols = 1;
};
RowScales row_scales(const TensorSource& source, const DequantInput& in, int64_t row0,
                     int64_t rows);

// FP8 weight rows [row0, row1) dequantized straight into `dst` (BF16 or F32 elements, row stride
// dst_ld; transposed: dst[c * dst_ld + r]) with the SIMD kernels. NaN codes per the policy.
// `dst` null: nothing is converted; the rows and their scales are read and refused exactly as a
// conversion would refuse them (bad scale entries, overflowing products, NaN codes).
void dequant_fp8_into(const TensorSource& source, const DequantInput& in, int64_t row0,
                      int64_t row1, Dtype out, uint8_t* dst, int64_t dst_ld, bool transpose);

// An MXFP4 matrix (DequantInput::mx_scale) dequantized into `dst` as dequant_fp8_into does:
// e2m1 x 2^(scale - 127) in float32, then the output dtype. The E8M0 NaN code and overflow are
// refused unless the NaN policy reproduces torch (2^128 = inf).
void dequant_mxfp4_into(const TensorSource& source, const DequantInput& in, Dtype out, uint8_t* dst,
                        int64_t dst_ld, bool transpose);

// An unscaled BF16 or F32 weight [rows, cols] written transposed into `dst` in its own dtype
// (dst[c * dst_ld + r]), its bits unchanged as torch's copy keeps them (NaN payloads too); a NaN is
// refused where the policy says so.
void transpose_raw_into(const TensorSource& source, const DequantInput& in, uint8_t* dst,
                        int64_t dst_ld);

// Encodes products as BF16, F16 or F32 bytes (NaN per policy for BF16; refused NaN never reaches
// here); F16 as torch's copy_ (f32_to_f16_rne). Any other dtype is refused.
void encode_products(std::span<const float> products, Dtype out, NanPolicy nan, uint8_t* dst);

// Reads a matrix view: rows x cols floats, plus its raw element bytes in the source dtype.
struct LoadedMatrix {
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> raw;  // row-major in the source dtype
};
// For a whole-tensor view, rows [row0, row1) only (row1 < 0: all).
LoadedMatrix load_matrix(const TensorSource& source, const MatrixView& view, int64_t row0 = 0,
                         int64_t row1 = -1);

}  // namespace moeckpt::exec
