#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "exec/transforms.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/numerics.hpp"
#include "moeckpt/plan.hpp"

namespace moeckpt {

uint64_t Plan::output_bytes() const {
  uint64_t n = 0;
  for (const auto& o : outputs) n += o.nbytes();
  return n;
}

MemorySink::MemorySink(const std::vector<TensorSpec>& outputs) {
  for (const auto& o : outputs) buffers_.emplace_back(o.nbytes());
}

void MemorySink::write(size_t out, uint64_t offset, std::span<const uint8_t> bytes) {
  auto& b = buffers_.at(out);
  if (offset > b.size() || bytes.size() > b.size() - offset) fail("", "", "write outside output");
  std::memcpy(b.data() + offset, bytes.data(), bytes.size());
}

namespace {

using exec::LoadedMatrix;

constexpr uint64_t kCopyChunk = 64ull << 20;

void run(const CopyTask& t, const TensorSource& src, TensorSink& sink) {
  std::vector<uint8_t> buf(std::min<uint64_t>(t.src->nbytes, kCopyChunk));
  for (uint64_t off = 0; off < t.src->nbytes; off += buf.size()) {
    auto n = std::min<uint64_t>(buf.size(), t.src->nbytes - off);
    std::span<uint8_t> part(buf.data(), n);
    src.read(*t.src, off, part);
    sink.write(t.out, off, part);
  }
}

void run(const DequantTask& t, const TensorSource& src, TensorSink& sink) {
  auto products = exec::dequant_products(src, t.in);
  std::vector<uint8_t> out(products.size() * dtype_size(t.out_dtype));
  exec::encode_products(products, t.out_dtype, t.in.nan, out.data());
  sink.write(t.out, 0, out);
}

void run(const ExpertSlotTask& t, const TensorSource& src, TensorSink& sink) {
  std::vector<float> slot(static_cast<size_t>(t.rows * t.cols), 0.0f);
  NanPolicy nan = NanPolicy::kRefuse;
  for (const auto& [in, col0] : t.parts) {
    nan = in.nan;
    auto p = exec::dequant_products(src, in);
    const int64_t w_rows = static_cast<int64_t>(in.weight->shape[0]);
    for (int64_t j = 0; j < w_rows; ++j)
      for (int64_t d = 0; d < t.rows; ++d)
        slot[static_cast<size_t>(d * t.cols + col0 + j)] = p[static_cast<size_t>(j * t.rows + d)];
  }
  const size_t esize = dtype_size(t.out_dtype);
  std::vector<uint8_t> out(slot.size() * esize);
  exec::encode_products(slot, t.out_dtype, nan, out.data());
  sink.write(t.out, static_cast<uint64_t>(t.slot) * out.size(), out);
}

std::vector<uint8_t> float_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * 4);
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

float amax_finite(float a, float x) {
  return std::isfinite(x) ? std::max(a, std::fabs(x)) : a;
}

void check_finite(const MatrixView& v, const LoadedMatrix& m, const std::vector<float>& x) {
  for (size_t i = 0; i < x.size(); ++i)
    if (!std::isfinite(x[i]))
      fail(v.src->file, v.src->name,
           (v.slot >= 0 ? "slot " + std::to_string(v.slot) + " " : std::string()) + "element [" +
               std::to_string(static_cast<int64_t>(i) / m.cols) + ", " +
               std::to_string(static_cast<int64_t>(i) % m.cols) +
               "] of the weight to quantize is " + std::to_string(x[i]),
           "finite values (block quantization; --quant cast reproduces torch's NaN codes)");
}

void run(const EmitTask& t, const TensorSource& src, TensorSink& sink) {
  LoadedMatrix m = exec::load_matrix(src, t.in);
  if (t.mode == QuantMode::kNone) {
    sink.write(t.out_weight, 0, m.raw);
    return;
  }
  std::vector<float> x(static_cast<size_t>(m.rows * m.cols));
  const size_t esize = dtype_size(t.in.src->dtype);
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = exec::element_to_float(t.in.src->dtype, &m.raw[i * esize]);
  const int64_t sc = ceil_div(m.cols, t.block_cols);
  std::vector<float> scales(static_cast<size_t>(t.scale_rows * sc), 1.0f);
  std::vector<uint8_t> codes(x.size());
  if (t.mode == QuantMode::kCast) {
    for (size_t i = 0; i < x.size(); ++i) codes[i] = numerics::f32_to_fp8_e4m3fn_torch(x[i]);
  } else {
    check_finite(t.in, m, x);
    std::fill(scales.begin(), scales.end(), 0.0f);
    for (int64_t r = 0; r < m.rows; ++r)
      for (int64_t c = 0; c < m.cols; ++c) {
        float& a = scales[static_cast<size_t>((r / t.block_rows) * sc + c / t.block_cols)];
        a = amax_finite(a, x[static_cast<size_t>(r * m.cols + c)]);
      }
    for (auto& s : scales) s = numerics::block_scale_from_amax(s);
    for (int64_t r = 0; r < m.rows; ++r)
      for (int64_t c = 0; c < m.cols; ++c) {
        const size_t i = static_cast<size_t>(r * m.cols + c);
        codes[i] = numerics::f32_to_fp8_e4m3fn_saturating(
            x[i] / scales[static_cast<size_t>((r / t.block_rows) * sc + c / t.block_cols)]);
      }
  }
  sink.write(t.out_weight, 0, codes);
  if (t.out_scale) sink.write(*t.out_scale, 0, float_bytes(scales));
}

void run(const FusedQuantTask& t, const TensorSource& src, TensorSink& sink) {
  static constexpr Projection kProj[3] = {Projection::kQ, Projection::kK, Projection::kV};
  std::array<std::vector<float>, 3> x;
  std::array<LoadedMatrix, 3> m;
  std::array<std::vector<float>, 3> scales;
  int64_t sc = 0;
  for (size_t p = 0; p < 3; ++p) {
    scales[p].assign(0, 0.0f);
    if (!t.in[p]) continue;
    m[p] = exec::load_matrix(src, *t.in[p]);
    sc = ceil_div(m[p].cols, t.block_cols);
    const size_t esize = dtype_size(t.in[p]->src->dtype);
    x[p].resize(static_cast<size_t>(m[p].rows * m[p].cols));
    for (size_t i = 0; i < x[p].size(); ++i)
      x[p][i] = exec::element_to_float(t.in[p]->src->dtype, &m[p].raw[i * esize]);
    check_finite(*t.in[p], m[p], x[p]);
  }
  for (size_t p = 0; p < 3; ++p)
    scales[p].assign(static_cast<size_t>(t.layout.scale_rows(kProj[p]) * sc), 0.0f);
  auto owner_index = [](Projection o) {
    return o == Projection::kQ ? 0u : o == Projection::kK ? 1u : 2u;
  };
  for (size_t p = 0; p < 3; ++p)
    for (int64_t r = 0; r < m[p].rows; ++r) {
      auto s = t.layout.scale_source(kProj[p], r);
      float* a = &scales[owner_index(s.owner)][static_cast<size_t>(s.scale_row * sc)];
      for (int64_t c = 0; c < m[p].cols; ++c)
        a[c / t.block_cols] =
            amax_finite(a[c / t.block_cols], x[p][static_cast<size_t>(r * m[p].cols + c)]);
    }
  for (auto& v : scales)
    for (auto& s : v) s = numerics::block_scale_from_amax(s);
  for (size_t p = 0; p < 3; ++p) {
    if (!t.in[p]) continue;
    std::vector<uint8_t> codes(x[p].size());
    for (int64_t r = 0; r < m[p].rows; ++r) {
      auto s = t.layout.scale_source(kProj[p], r);
      const float* srow = &scales[owner_index(s.owner)][static_cast<size_t>(s.scale_row * sc)];
      for (int64_t c = 0; c < m[p].cols; ++c) {
        const size_t i = static_cast<size_t>(r * m[p].cols + c);
        codes[i] = numerics::f32_to_fp8_e4m3fn_saturating(x[p][i] / srow[c / t.block_cols]);
      }
    }
    sink.write(*t.out_weight[p], 0, codes);
  }
  for (size_t p = 0; p < 3; ++p)
    if (t.out_scale[p]) sink.write(*t.out_scale[p], 0, float_bytes(scales[p]));
}

}  // namespace

void execute(const Plan& plan, const TensorSource& source, TensorSink& sink,
             const ExecOptions& options) {
  unsigned threads =
      options.threads ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  threads =
      std::min<unsigned>(threads, static_cast<unsigned>(std::max<size_t>(1, plan.tasks.size())));
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&]() {
    for (;;) {
      size_t i = next++;
      if (i >= plan.tasks.size() || failed) return;
      try {
        std::visit([&](const auto& task) { run(task, source, sink); }, plan.tasks[i]);
      } catch (...) {
        std::lock_guard lock(error_mutex);
        if (!error) error = std::current_exception();
        failed = true;
        return;
      }
    }
  };
  if (threads <= 1) {
    worker();
  } else {
    std::vector<std::thread> pool;
    for (unsigned i = 0; i < threads; ++i) pool.emplace_back(worker);
    for (auto& th : pool) th.join();
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace moeckpt
