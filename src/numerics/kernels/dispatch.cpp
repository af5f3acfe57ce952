// ISA detection, argument checks and dispatch for the bulk FP8 kernels.
#include <cpuid.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "moeckpt/error.hpp"
#include "moeckpt/kernels.hpp"
#include "numerics/kernels/kernels_internal.hpp"

namespace moeckpt::kernels {
namespace {

Isa detect_hardware() {
  __builtin_cpu_init();
  // libgcc also checks that the OS saves the YMM/ZMM state before it reports these.
  // F16C comes with every AVX2 CPU, but the FP8 decode relies on it, so check.
  // (F16C through CPUID leaf 1, ECX bit 29: clang's __builtin_cpu_supports does not know it.)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
  const bool avx2 = __builtin_cpu_supports("avx2") && f16c;
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    return Isa::kAvx512;
  return avx2 ? Isa::kAvx2 : Isa::kScalar;
}

Isa hardware_isa() {
  static const Isa isa = detect_hardware();
  return isa;
}

// A request for an ISA the CPU lacks runs the best one it has.
Isa usable(Isa isa) {
  return isa_available(isa) ? isa : hardware_isa();
}

void check(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("moeckpt::kernels: ") + what);
}

}  // namespace

Isa isa_from_env(const char* value, Isa hardware) {
  if (value == nullptr || *value == '\0') return hardware;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512})
    if (std::strcmp(value, isa_name(isa)) == 0)
      return isa < hardware ? isa : hardware;  // only ever lower: a higher ISA would fault
  // A typo silently running another kernel would make a benchmark or a bisection lie.
  fail(ErrorKind::kInvalidArgument, "", "",
       "environment variable MOECKPT_ISA=\"" + std::string(value) + "\" names no kernel ISA",
       "scalar, avx2 or avx512, or MOECKPT_ISA unset");
}

Isa best_isa() {
  // A refused value leaves the static uninitialized: every later call refuses it again.
  static const Isa isa = isa_from_env(std::getenv("MOECKPT_ISA"), hardware_isa());
  return isa;
}

bool isa_available(Isa isa) {
  return isa <= hardware_isa();
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

uint64_t dequant_fp8(const DequantArgs& args, Isa isa) {
  check(args.rows >= 0 && args.cols >= 0, "dequant: negative extent");
  if (args.rows == 0 || args.cols == 0) return 0;
  check(args.src && args.dst, "dequant: null buffer");
  check(args.src_ld >= args.cols, "dequant: src_ld < cols");
  check(args.dst_ld >= (args.transpose ? args.rows : args.cols), "dequant: dst_ld too small");
  DequantArgs a = args;
  // No scale: every row reads a single block whose scale is exactly 1.
  static const float kOne = 1.0f;
  std::vector<const float*> ones;
  if (!a.row_scale) {
    ones.assign(static_cast<size_t>(a.rows), &kOne);
    a.row_scale = ones.data();
    a.block_cols = a.cols;
  }
  check(a.block_cols > 0, "dequant: block_cols must be positive");
  switch (usable(isa)) {
    case Isa::kAvx512:
      return detail::dequant_avx512(a);
    case Isa::kAvx2:
      return detail::dequant_avx2(a);
    case Isa::kScalar:
      break;
  }
  return detail::dequant_scalar(a, 0, a.rows, 0, a.cols);
}

void quant_bf16_to_fp8(const QuantArgs& args, Isa isa) {
  check(args.rows >= 0 && args.cols >= 0, "quant: negative extent");
  if (args.rows == 0 || args.cols == 0) return;
  check(args.src && args.dst, "quant: null buffer");
  check(args.src_ld >= (args.transpose ? args.rows : args.cols), "quant: src_ld too small");
  check(args.dst_ld >= args.cols, "quant: dst_ld < cols");
  check(args.mode == QuantArgs::kTorchCast || args.mode == QuantArgs::kSaturating,
        "quant: unknown mode");
  QuantArgs a = args;
  static const float kOne = 1.0f;
  std::vector<const float*> ones;
  if (a.mode == QuantArgs::kTorchCast) {
    // The cast reads no scale; a valid one keeps every kernel free of special cases.
    ones.assign(static_cast<size_t>(a.rows), &kOne);
    a.row_scale = ones.data();
    a.block_cols = a.cols;
  }
  check(a.row_scale != nullptr, "quant: kSaturating needs row_scale");
  check(a.block_cols > 0, "quant: block_cols must be positive");
  switch (usable(isa)) {
    case Isa::kAvx512:
      return detail::quant_avx512(a);
    case Isa::kAvx2:
      return detail::quant_avx2(a);
    case Isa::kScalar:
      break;
  }
  detail::quant_scalar(a, 0, a.rows, 0, a.cols);
}

void block_amax_bf16(const uint16_t* src, int64_t rows, int64_t cols, int64_t src_ld,
                     bool transpose, int64_t block_rows, int64_t block_cols, float* amax,
                     int64_t amax_ld, Isa isa) {
  check(rows >= 0 && cols >= 0, "amax: negative extent");
  if (rows == 0 || cols == 0) return;
  check(src && amax, "amax: null buffer");
  check(src_ld >= (transpose ? rows : cols), "amax: src_ld too small");
  check(block_rows > 0 && block_cols > 0, "amax: block sizes must be positive");
  check(amax_ld >= cols / block_cols + (cols % block_cols != 0), "amax: amax_ld too small");
  const detail::AmaxArgs a{src,        rows,       cols, src_ld, transpose,
                           block_rows, block_cols, amax, amax_ld};
  switch (usable(isa)) {
    case Isa::kAvx512:
      return detail::amax_avx512(a);
    case Isa::kAvx2:
      return detail::amax_avx2(a);
    case Isa::kScalar:
      break;
  }
  detail::amax_scalar(a);
}

}  // namespace moeckpt::kernels
