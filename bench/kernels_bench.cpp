// Kernel throughput per ISA on MiMo-V2-Flash shapes. Bytes processed = FP8 bytes (one per element:
// the FP8 input of a dequantization, the FP8 output of a quantization), so GB/s reads as
// "G elements/s". Threads: every thread converts its own tensors, as the executor's workers do.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "moeckpt/kernels.hpp"

namespace {

using moeckpt::kernels::DequantArgs;
using moeckpt::kernels::Isa;
using moeckpt::kernels::QuantArgs;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// 64-byte aligned, pre-faulted buffer plus `offset` bytes of misalignment.
template <typename T>
struct Buffer {
  std::unique_ptr<uint8_t, FreeDeleter> mem;
  T* data;
  Buffer(size_t n, size_t offset = 0) {
    const size_t bytes = (n * sizeof(T) + offset + 63) / 64 * 64;
    mem.reset(static_cast<uint8_t*>(std::aligned_alloc(64, bytes)));
    std::memset(mem.get(), 0, bytes);
    data = reinterpret_cast<T*>(mem.get() + offset);
  }
};

// Realistic weights: finite codes, mostly small magnitudes.
void fill_codes(uint8_t* p, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng() & 0xF7F7F7F7F7F7F7F7ull;  // exponent field <= 14: never a NaN code
    std::memcpy(p + i, &v, n - i < 8 ? n - i : 8);
  }
}

struct Scales {
  std::vector<float> grid;
  std::vector<const float*> rows;
  Scales(int64_t rows_, int64_t cols, int64_t block) {
    const int64_t gr = (rows_ + block - 1) / block, gc = (cols + block - 1) / block;
    grid.resize(static_cast<size_t>(gr * gc));
    for (size_t i = 0; i < grid.size(); ++i) grid[i] = 1e-3f * static_cast<float>(1 + i % 7);
    for (int64_t r = 0; r < rows_; ++r) rows.push_back(&grid[static_cast<size_t>(r / block * gc)]);
  }
};

// gate_proj [2048, 4096] -> the transposed half of a [4096, 4096] grouped slot (BF16).
void dequant_expert_transposed(benchmark::State& state, Isa isa, size_t misalign) {
  const int64_t rows = 2048, cols = 4096, slot_cols = 4096;
  Buffer<uint8_t> src(static_cast<size_t>(rows * cols));
  fill_codes(src.data, static_cast<size_t>(rows * cols), 1 + state.thread_index());
  Buffer<uint16_t> slot(static_cast<size_t>(cols * slot_cols), misalign);
  Scales s(rows, cols, 128);
  DequantArgs a;
  a.src = src.data;
  a.rows = rows;
  a.cols = cols;
  a.src_ld = cols;
  a.row_scale = s.rows.data();
  a.block_cols = 128;
  a.dst = slot.data;
  a.dst_ld = slot_cols;
  a.transpose = true;
  for (auto _ : state) benchmark::DoNotOptimize(moeckpt::kernels::dequant_fp8(a, isa));
  state.SetBytesProcessed(state.iterations() * rows * cols);
}

// A dense [12288, 4096] weight, row-major BF16 out.
void dequant_rows(benchmark::State& state, Isa isa, size_t misalign) {
  const int64_t rows = 12288, cols = 4096;
  Buffer<uint8_t> src(static_cast<size_t>(rows * cols));
  fill_codes(src.data, static_cast<size_t>(rows * cols), 1 + state.thread_index());
  Buffer<uint16_t> dst(static_cast<size_t>(rows * cols), misalign);
  Scales s(rows, cols, 128);
  DequantArgs a;
  a.src = src.data;
  a.rows = rows;
  a.cols = cols;
  a.src_ld = cols;
  a.row_scale = s.rows.data();
  a.block_cols = 128;
  a.dst = dst.data;
  a.dst_ld = cols;
  for (auto _ : state) benchmark::DoNotOptimize(moeckpt::kernels::dequant_fp8(a, isa));
  state.SetBytesProcessed(state.iterations() * rows * cols);
}

// to_hf: gate_proj = slot[:, :2048]^T of a [4096, 4096] BF16 slot -> FP8 [2048, 4096].
void quant_expert(benchmark::State& state, Isa isa, QuantArgs::Mode mode, bool transpose) {
  const int64_t rows = 2048, cols = 4096;
  Buffer<uint16_t> src(static_cast<size_t>(4096 * 4096));
  std::mt19937_64 rng(7);
  for (int64_t i = 0; i < 4096 * 4096; ++i)
    src.data[i] = static_cast<uint16_t>(0x3C00 + rng() % 0x0400) | (rng() & 1 ? 0x8000 : 0);
  Buffer<uint8_t> dst(static_cast<size_t>(rows * cols));
  Scales s(rows, cols, 128);
  QuantArgs a;
  a.src = src.data;
  a.rows = rows;
  a.cols = cols;
  a.src_ld = 4096;
  a.transpose = transpose;
  a.dst = dst.data;
  a.dst_ld = cols;
  a.mode = mode;
  a.row_scale = s.rows.data();
  a.block_cols = 128;
  for (auto _ : state) {
    moeckpt::kernels::quant_bf16_to_fp8(a, isa);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * rows * cols);
}

void amax_expert(benchmark::State& state, Isa isa, bool transpose) {
  const int64_t rows = 2048, cols = 4096;
  Buffer<uint16_t> src(static_cast<size_t>(4096 * 4096));
  std::mt19937_64 rng(8);
  for (int64_t i = 0; i < 4096 * 4096; ++i) src.data[i] = static_cast<uint16_t>(rng());
  std::vector<float> amax(16 * 32);
  for (auto _ : state) {
    moeckpt::kernels::block_amax_bf16(src.data, rows, cols, 4096, transpose, 128, 128, amax.data(),
                                      32, isa);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * rows * cols);
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (!moeckpt::kernels::isa_available(isa)) continue;
    const std::string n = moeckpt::kernels::isa_name(isa);
    benchmark::RegisterBenchmark(("dequant_T_2048x4096_bf16/" + n).c_str(),
                                 dequant_expert_transposed, isa, size_t{0})
        ->Threads(1)
        ->Threads(2)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("dequant_T_2048x4096_bf16_misaligned16/" + n).c_str(),
                                 dequant_expert_transposed, isa, size_t{16})
        ->UseRealTime();
    benchmark::RegisterBenchmark(("dequant_12288x4096_bf16/" + n).c_str(), dequant_rows, isa,
                                 size_t{0})
        ->Threads(1)
        ->Threads(2)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("dequant_12288x4096_bf16_misaligned16/" + n).c_str(),
                                 dequant_rows, isa, size_t{16})
        ->UseRealTime();
    for (bool t : {false, true}) {
      const std::string tn = t ? "_T" : "";
      benchmark::RegisterBenchmark(("quant_sat" + tn + "_2048x4096/" + n).c_str(), quant_expert,
                                   isa, QuantArgs::kSaturating, t)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("quant_cast" + tn + "_2048x4096/" + n).c_str(), quant_expert,
                                   isa, QuantArgs::kTorchCast, t)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("block_amax" + tn + "_2048x4096/" + n).c_str(), amax_expert,
                                   isa, t)
          ->UseRealTime();
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
