#pragma once
// Per-ISA entry points behind moeckpt/kernels.hpp. Arguments arrive validated and normalized
// (row_scale never null, every extent positive). The ISA files must not instantiate any inline or
// template function shared with other translation units (the linker could keep their AVX copy for
// everyone), so they use intrinsics and file-local helpers only.
#include <cstdint>

#include "moeckpt/kernels.hpp"

namespace moeckpt::kernels::detail {

struct AmaxArgs {
  const uint16_t* src;
  int64_t rows, cols, src_ld;  // of the logical matrix
  bool transpose;
  int64_t block_rows, block_cols;
  float* amax;
  int64_t amax_ld;
};

// Scalar reference on the logical rectangle [r0, r1) x [c0, c1); the SIMD kernels use it for
// ragged edges. Returns the number of NaN codes in the rectangle.
uint64_t dequant_scalar(const DequantArgs& a, int64_t r0, int64_t r1, int64_t c0, int64_t c1);
void quant_scalar(const QuantArgs& a, int64_t r0, int64_t r1, int64_t c0, int64_t c1);
void amax_scalar(const AmaxArgs& a);
// Folds the maximum BF16 magnitude bits `m` (-1: no finite value) of a block into its amax.
void amax_fold(float* amax, int32_t m);
// The SIMD amax kernels' last step for one group of source rows (group index `group`): the
// column maxima `acc` (BF16 magnitude bits, -1: no finite value) of `scols` source columns,
// folded per segment of `seg` columns into the amax of their block.
void fold_column_maxima(const AmaxArgs& a, const int16_t* acc, int64_t scols, int64_t seg,
                        int64_t group);

uint64_t dequant_avx2(const DequantArgs& a);
void quant_avx2(const QuantArgs& a);
void amax_avx2(const AmaxArgs& a);

uint64_t dequant_avx512(const DequantArgs& a);
void quant_avx512(const QuantArgs& a);
void amax_avx512(const AmaxArgs& a);

}  // namespace moeckpt::kernels::detail
