#pragma once
// Bulk FP8 <-> BF16 kernels with runtime ISA dispatch. Every ISA is bit-exact with the scalar
// kernel, which is built on the reference codecs of moeckpt/numerics.hpp.
#include <cstdint>

namespace moeckpt::kernels {

enum class Isa { kScalar, kAvx2, kAvx512 };

// The ISA the kernels run: the best of this CPU (and OS), detected once, or the lower one
// MOECKPT_ISA=scalar|avx2|avx512 forces (a higher one runs the CPU's best). Any other non-empty
// value is refused (moeckpt::Error, kInvalidArgument) by every call, so no run ignores it.
Isa best_isa();
// What MOECKPT_ISA `value` (nullptr or empty: unset) selects on a CPU whose best is `hardware`;
// throws as best_isa() does.
Isa isa_from_env(const char* value, Isa hardware);
// Whether this CPU can run `isa` at all (ignores MOECKPT_ISA).
bool isa_available(Isa isa);
const char* isa_name(Isa isa);

struct DequantArgs {
  const uint8_t* src = nullptr;  // FP8 E4M3FN codes, row-major
  int64_t rows = 0, cols = 0, src_ld = 0;
  // row_scale[r] -> the scale row for weight row r (one float per column block). nullptr: every
  // scale is 1.
  const float* const* row_scale = nullptr;
  int64_t block_cols = 128;  // any positive value; the last block may be ragged
  void* dst = nullptr;       // BF16 (uint16 bits) or F32 elements
  int64_t dst_ld = 0;
  bool dst_f32 = false;
  bool transpose = false;  // false: dst[r * dst_ld + c]; true: dst[c * dst_ld + r]
  // NaN results. true (torch): BF16 0xFFFF, F32 bits 0x7FF00000 | sign(code) for a NaN code.
  // false: BF16 0x7FC0, F32 0x7FC00000 | sign(code) for a NaN code (the product with any non-NaN
  // scale). A NaN product of a non-NaN code (NaN or inf scale) stays the product in F32.
  bool torch_nan = false;
};

// out = bf16_rne(fp8_to_f32(code) * scale), one float32 multiply (or the product itself for F32).
// Returns the number of NaN codes (0x7F/0xFF) seen. Throws std::invalid_argument on bad shapes.
uint64_t dequant_fp8(const DequantArgs& a, Isa isa = best_isa());

struct QuantArgs {
  const uint16_t* src = nullptr;           // BF16 input (uint16 bits), row-major
  int64_t rows = 0, cols = 0, src_ld = 0;  // rows/cols of the logical matrix
  // true: the logical matrix is src^T, element (r, c) = src[c * src_ld + r].
  bool transpose = false;
  uint8_t* dst = nullptr;  // FP8 codes of the logical matrix, row-major
  int64_t dst_ld = 0;
  // kTorchCast: f32_to_fp8_e4m3fn_torch(x). kSaturating: f32_to_fp8_e4m3fn_saturating(x / scale)
  // with scale = row_scale[r][c / block_cols] (one float32 division).
  enum Mode { kTorchCast, kSaturating } mode = kTorchCast;
  const float* const* row_scale = nullptr;  // kSaturating only: per logical row
  int64_t block_cols = 128;
};
void quant_bf16_to_fp8(const QuantArgs& a, Isa isa = best_isa());

// Max over |x| of the finite values of each (row block, column block) of the logical matrix
// (transpose as in QuantArgs), max-accumulated into amax[(r / block_rows) * amax_ld +
// c / block_cols] exactly as `a = std::max(a, std::fabs(x))` per finite element; blocks without
// finite values are left alone.
void block_amax_bf16(const uint16_t* src, int64_t rows, int64_t cols, int64_t src_ld,
                     bool transpose, int64_t block_rows, int64_t block_cols, float* amax,
                     int64_t amax_ld, Isa isa = best_isa());

}  // namespace moeckpt::kernels
