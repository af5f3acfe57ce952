#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>

#include "exec/numeric_refusals.hpp"
#include "exec/raw_buffer.hpp"
#include "exec/transforms.hpp"
#include "exec/worker_threads.hpp"
#include "moeckpt/block_quant.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/kernels.hpp"
#include "moeckpt/mxfp4.hpp"
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
  if (offset > b.size() || bytes.size() > b.size() - offset)
    fail(ErrorKind::kInvalidArgument, "", "", "write outside output");
  std::memcpy(b.data() + offset, bytes.data(), bytes.size());
}

namespace {

using exec::LoadedMatrix;

// The source bytes [begin, end) of a copy's element range.
std::pair<uint64_t, uint64_t> copy_byte_range(const CopyTask& t) {
  const uint64_t es = std::max<uint64_t>(1, dtype_size(t.src->dtype));
  const uint64_t begin = std::min(t.src->nbytes, t.elem0 * es);
  const uint64_t end =
      t.elem1 == UINT64_MAX ? t.src->nbytes : std::min(t.src->nbytes, t.elem1 * es);
  return {begin, std::max(begin, end)};
}

void run(const CopyTask& t, const TensorSource& src, TensorSink& sink) {
  if (t.convert_to) {
    const uint64_t in_size = dtype_size(t.src->dtype), out_size = dtype_size(*t.convert_to);
    const uint64_t chunk_elems = std::max<uint64_t>(1, t.chunk_bytes / in_size);
    const uint64_t n = std::min(t.src->nbytes / in_size, t.elem1);
    if (t.elem0 >= n) return;
    exec::RawBuffer<uint8_t> in(std::min(n - t.elem0, chunk_elems) * in_size);
    exec::RawBuffer<uint8_t> out(std::min(n - t.elem0, chunk_elems) * out_size);
    for (uint64_t e = t.elem0; e < n; e += chunk_elems) {
      const uint64_t m = std::min(chunk_elems, n - e);
      std::span<uint8_t> part(in.data(), m * in_size);
      src.read(*t.src, e * in_size, part);
      const auto floats = exec::to_floats(*t.src, part);
      exec::encode_products(floats, *t.convert_to, NanPolicy::kTorchCompat, out.data());
      sink.write(t.out, static_cast<uint64_t>(static_cast<int64_t>(e) + t.out_delta) * out_size,
                 std::span<const uint8_t>(out.data(), m * out_size));
    }
    return;
  }
  const auto [begin, end] = copy_byte_range(t);
  if (begin >= end) return;
  const auto es = static_cast<int64_t>(std::max<uint64_t>(1, dtype_size(t.src->dtype)));
  exec::RawBuffer<uint8_t> buf(
      std::min<uint64_t>(end - begin, std::max<uint64_t>(1, t.chunk_bytes)));
  for (uint64_t off = begin; off < end; off += buf.size()) {
    auto n = std::min<uint64_t>(buf.size(), end - off);
    std::span<uint8_t> part(buf.data(), n);
    src.read(*t.src, off, part);
    sink.write(t.out, static_cast<uint64_t>(static_cast<int64_t>(off) + t.out_delta * es), part);
  }
}

void run(const DequantTask& t, const TensorSource& src, TensorSink& sink) {
  const uint64_t cols = t.in.weight->shape[1];
  const size_t esize = dtype_size(t.out_dtype);
  const auto out_row = static_cast<uint64_t>(t.out_row0 < 0 ? t.row0 : t.out_row0);
  if (t.in.mx_scale) {  // MXFP4: the whole matrix (planned as one task)
    exec::RawBuffer<uint8_t> out(static_cast<size_t>(t.in.weight->shape[0] * 2 * cols) * esize);
    exec::dequant_mxfp4_into(src, t.in, t.out_dtype, out.data(), static_cast<int64_t>(2 * cols),
                             false);
    sink.write(t.out, 0, out.bytes());
    return;
  }
  if (t.in.weight->dtype == Dtype::F8_E4M3) {
    const int64_t row1 = t.row1 < 0 ? static_cast<int64_t>(t.in.weight->shape[0]) : t.row1;
    exec::RawBuffer<uint8_t> out(static_cast<size_t>(row1 - t.row0) * cols * esize);
    exec::dequant_fp8_into(src, t.in, t.row0, row1, t.out_dtype, out.data(),
                           static_cast<int64_t>(cols), false);
    sink.write(t.out, out_row * cols * esize, out.bytes());
    return;
  }
  auto products = exec::dequant_products(src, t.in, t.row0, t.row1);
  exec::RawBuffer<uint8_t> out(products.size() * esize);
  exec::encode_products(products, t.out_dtype, t.in.nan, out.data());
  sink.write(t.out, out_row * cols * esize, out.bytes());
}

void run(const ExpertSlotTask& t, const TensorSource& src, TensorSink& sink) {
  const size_t esize = dtype_size(t.out_dtype);
  exec::RawBuffer<uint8_t> slot(static_cast<size_t>(t.rows * t.cols) * esize);
  for (const auto& [in, col0] : t.parts) {
    uint8_t* dst = slot.data() + static_cast<size_t>(col0) * esize;
    if (in.mx_scale) {
      exec::dequant_mxfp4_into(src, in, t.out_dtype, dst, t.cols, true);
      continue;
    }
    if (in.weight->dtype == Dtype::F8_E4M3) {  // the hot path: dequantize + transpose in one pass
      exec::dequant_fp8_into(src, in, 0, -1, t.out_dtype, dst, t.cols, true);
      continue;
    }
    if (!in.scale && in.weight->dtype == t.out_dtype &&
        (t.out_dtype == Dtype::BF16 || t.out_dtype == Dtype::F32)) {  // a BF16 release: bits moved
      exec::transpose_raw_into(src, in, dst, t.cols);
      continue;
    }
    auto p = exec::dequant_products(src, in);
    const int64_t w_rows = static_cast<int64_t>(in.weight->shape[0]);
    std::vector<float> column(static_cast<size_t>(w_rows));
    for (int64_t d = 0; d < t.rows; ++d) {
      for (int64_t j = 0; j < w_rows; ++j)
        column[static_cast<size_t>(j)] = p[static_cast<size_t>(j * t.rows + d)];
      exec::encode_products(column, t.out_dtype, in.nan,
                            dst + static_cast<size_t>(d * t.cols) * esize);
    }
  }
  sink.write(t.out, static_cast<uint64_t>(t.slot) * slot.size(), slot.bytes());
}

std::vector<uint8_t> float_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * 4);
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// Float rows quantized on shared block scales (numerics/block_quant): every input's block amax
// first, since a scale row can take rows from several inputs, then the scales, then the codes.
struct Fp8Rows {
  std::span<const float> x;
  std::span<float* const> row_scale;
  std::span<uint8_t> codes;
};
void quantize_fp8_blocks(const std::vector<Fp8Rows>& inputs, int64_t cols, int64_t block_cols,
                         const std::vector<std::vector<float>*>& scales) {
  for (const auto& in : inputs)
    numerics::accumulate_block_amax(in.x, cols, block_cols, in.row_scale);
  for (auto* s : scales) numerics::amax_to_scales(*s);
  for (const auto& in : inputs)
    numerics::quantize_block_rows(in.x, cols, block_cols, in.row_scale, in.codes);
}

// Each row's scale row in a GroupQuantTask input: the runs must cover every row.
std::vector<float*> run_row_scales(const MatrixView& v, const std::vector<ScaleRun>& runs,
                                   int64_t rows, std::vector<std::vector<float>>& scales,
                                   int64_t sc) {
  std::vector<float*> out(static_cast<size_t>(rows), nullptr);
  for (const auto& run : runs)
    for (int64_t r = run.row0; r < run.row1 && r < rows; ++r)
      out[static_cast<size_t>(r)] = &scales[run.tensor][static_cast<size_t>(run.scale_row * sc)];
  for (int64_t r = 0; r < rows; ++r)
    if (!out[static_cast<size_t>(r)])
      fail(ErrorKind::kMalformedFile, v.src->file, v.src->name,
           "row " + std::to_string(r) + " has no block scale in the plan");
  return out;
}

[[noreturn]] void fail_non_finite(const MatrixView& v, int64_t r, int64_t c, float x) {
  exec::refuse_non_finite(*v.src, v.slot >= 0 ? "slot " + std::to_string(v.slot) + " " : "",
                          exec::element_position(r, c), x);
}

// `row0`: the first row of `x` within the view.
void check_finite(const MatrixView& v, const LoadedMatrix& m, const std::vector<float>& x,
                  int64_t row0 = 0) {
  for (size_t i = 0; i < x.size(); ++i)
    if (!std::isfinite(x[i]))
      fail_non_finite(v, row0 + static_cast<int64_t>(i) / m.cols, static_cast<int64_t>(i) % m.cols,
                      x[i]);
}

// BF16 weights (the native dtype) quantized with the SIMD kernels: the slot view is read once and
// transposed on the fly.
void run_bf16_quant(const EmitTask& t, const TensorSource& src, TensorSink& sink, int64_t all_rows,
                    int64_t r0, int64_t r1, const uint16_t* preloaded_slot = nullptr) {
  const SourceTensor& s = *t.in.src;
  exec::RawBuffer<uint16_t> data;
  const uint16_t* base;
  int64_t ld, rows = r1 - r0, cols;
  bool transpose = t.in.slot >= 0;
  if (transpose) {  // logical (r, c) = slot[c][col0 + r] of a [n, R, W] tensor
    const int64_t R = static_cast<int64_t>(s.shape[1]), W = static_cast<int64_t>(s.shape[2]);
    if (!preloaded_slot) {
      data = exec::RawBuffer<uint16_t>(static_cast<size_t>(R * W));
      src.read(s, static_cast<uint64_t>(t.in.slot * R * W) * 2,
               {reinterpret_cast<uint8_t*>(data.data()), data.size() * 2});
      preloaded_slot = data.data();
    }
    base = preloaded_slot + t.in.col0;
    ld = W;
    cols = R;
  } else {
    cols = static_cast<int64_t>(s.shape.size() > 1 ? s.shape[1] : 1);
    data = exec::RawBuffer<uint16_t>(static_cast<size_t>(rows * cols));
    src.read(s, static_cast<uint64_t>(r0 * cols) * 2,
             {reinterpret_cast<uint8_t*>(data.data()), data.size() * 2});
    base = data.data();
    ld = cols;
  }
  const int64_t sc = ceil_div(cols, t.block_cols);
  const int64_t sr0 = r0 / t.block_rows;
  const int64_t sr1 = r1 == all_rows ? t.scale_rows : ceil_div(r1, t.block_rows);
  std::vector<float> scales(static_cast<size_t>((sr1 - sr0) * sc), 1.0f);
  exec::RawBuffer<uint8_t> codes(static_cast<size_t>(rows * cols));
  kernels::QuantArgs q;
  q.src = base;
  q.rows = rows;
  q.cols = cols;
  q.src_ld = ld;
  q.transpose = transpose;
  q.dst = codes.data();
  q.dst_ld = cols;
  std::vector<const float*> row_scale;
  if (t.mode == QuantMode::kCast) {
    q.mode = kernels::QuantArgs::kTorchCast;
  } else {
    // Scanned in memory order (the transposed view is strided): [outer][inner] of the source.
    const int64_t outer = transpose ? cols : rows, inner = transpose ? rows : cols;
    for (int64_t o = 0; o < outer; ++o) {
      const uint16_t* line = base + o * ld;
      // A max-reduction of the exponent bits vectorizes; the position is found only on error.
      uint16_t top = 0;
      for (int64_t i = 0; i < inner; ++i) top = std::max<uint16_t>(top, line[i] & 0x7F80);
      if (top == 0x7F80)
        for (int64_t i = 0; i < inner; ++i)
          if ((line[i] & 0x7F80) == 0x7F80)
            fail_non_finite(t.in, r0 + (transpose ? i : o), transpose ? o : i,
                            numerics::bf16_to_f32(line[i]));
    }
    std::fill(scales.begin(), scales.end(), 0.0f);
    kernels::block_amax_bf16(base, rows, cols, ld, transpose, t.block_rows, t.block_cols,
                             scales.data(), sc);
    numerics::amax_to_scales(scales);
    for (int64_t r = 0; r < rows; ++r)
      row_scale.push_back(&scales[static_cast<size_t>(((r0 + r) / t.block_rows - sr0) * sc)]);
    q.mode = kernels::QuantArgs::kSaturating;
    q.row_scale = row_scale.data();
    q.block_cols = t.block_cols;
  }
  kernels::quant_bf16_to_fp8(q);
  sink.write(t.out_weight, static_cast<uint64_t>(r0 * cols), codes.bytes());
  if (t.out_scale)
    sink.write(*t.out_scale, static_cast<uint64_t>(sr0 * sc) * 4, float_bytes(scales));
}

void run(const EmitTask& t, const TensorSource& src, TensorSink& sink) {
  const int64_t all_rows =
      t.in.slot >= 0 ? t.in.cols
                     : static_cast<int64_t>(t.in.src->shape.empty() ? 1 : t.in.src->shape[0]);
  const int64_t r0 = t.in.slot >= 0 ? 0 : t.row0;
  const int64_t r1 = t.in.slot >= 0 || t.row1 < 0 ? all_rows : t.row1;
  const size_t esize = dtype_size(t.in.src->dtype);
  if (t.format == BlockFormat::kMxfp4) {
    LoadedMatrix m = exec::load_matrix(src, t.in, r0, r1);
    std::vector<float> x(static_cast<size_t>(m.rows * m.cols));
    if (t.in.src->dtype == Dtype::BF16) {  // the native dtype: widened in a plain loop
      const auto* b = reinterpret_cast<const uint16_t*>(m.raw.data());
      for (size_t i = 0; i < x.size(); ++i)
        x[i] = std::bit_cast<float>(static_cast<uint32_t>(b[i]) << 16);
    } else {
      for (size_t i = 0; i < x.size(); ++i)
        x[i] = exec::element_to_float(t.in.src->dtype, &m.raw[i * esize]);
    }
    check_finite(t.in, m, x, r0);
    const int64_t blocks = m.cols / numerics::kMxBlock;
    std::vector<uint8_t> packed(static_cast<size_t>(m.rows * m.cols / 2));
    std::vector<uint8_t> scales(static_cast<size_t>(m.rows * blocks));
    for (int64_t r = 0; r < m.rows; ++r)
      for (int64_t b = 0; b < blocks; ++b) {
        const size_t at = static_cast<size_t>(r * m.cols + b * numerics::kMxBlock);
        scales[static_cast<size_t>(r * blocks + b)] = numerics::quantize_mxfp4_block(
            std::span<const float>(&x[at], numerics::kMxBlock),
            std::span<uint8_t>(&packed[at / 2], numerics::kMxBlock / 2));
      }
    const int64_t at = t.out_row0 + r0;
    sink.write(t.out_weight, static_cast<uint64_t>(at * m.cols / 2), packed);
    if (t.out_scale) sink.write(*t.out_scale, static_cast<uint64_t>(at * blocks), scales);
    return;
  }
  if (t.mode != QuantMode::kNone && t.in.src->dtype == Dtype::BF16) {
    run_bf16_quant(t, src, sink, all_rows, r0, r1);
    return;
  }
  LoadedMatrix m = exec::load_matrix(src, t.in, r0, r1);
  if (t.mode == QuantMode::kNone) {
    sink.write(t.out_weight, static_cast<uint64_t>(r0 * m.cols) * esize, m.raw);
    return;
  }
  std::vector<float> x(static_cast<size_t>(m.rows * m.cols));
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = exec::element_to_float(t.in.src->dtype, &m.raw[i * esize]);
  const int64_t sc = ceil_div(m.cols, t.block_cols);
  // This task's scale rows; the last rows' task also writes the padding rows (ones).
  const int64_t sr0 = r0 / t.block_rows;
  const int64_t sr1 = r1 == all_rows ? t.scale_rows : ceil_div(r1, t.block_rows);
  std::vector<float> scales(static_cast<size_t>((sr1 - sr0) * sc), 1.0f);
  std::vector<uint8_t> codes(x.size());
  if (t.mode == QuantMode::kCast) {
    for (size_t i = 0; i < x.size(); ++i) codes[i] = numerics::f32_to_fp8_e4m3fn_torch(x[i]);
  } else {
    check_finite(t.in, m, x, r0);
    std::fill(scales.begin(), scales.end(), 0.0f);
    std::vector<float*> row_scale(static_cast<size_t>(m.rows));
    for (int64_t r = 0; r < m.rows; ++r)
      row_scale[static_cast<size_t>(r)] =
          &scales[static_cast<size_t>(((r0 + r) / t.block_rows - sr0) * sc)];
    quantize_fp8_blocks({{x, row_scale, codes}}, m.cols, t.block_cols, {&scales});
  }
  sink.write(t.out_weight, static_cast<uint64_t>(r0 * m.cols), codes);
  if (t.out_scale)
    sink.write(*t.out_scale, static_cast<uint64_t>(sr0 * sc) * 4, float_bytes(scales));
}

void run(const SlotGroupTask& g, const TensorSource& src, TensorSink& sink) {
  const SourceTensor& s = *g.parts.front().in.src;
  if (s.dtype != Dtype::BF16 || g.parts.front().mode == QuantMode::kNone ||
      g.parts.front().format != BlockFormat::kFp8) {
    for (const auto& part : g.parts) run(part, src, sink);
    return;
  }
  const int64_t R = static_cast<int64_t>(s.shape[1]), W = static_cast<int64_t>(s.shape[2]);
  exec::RawBuffer<uint16_t> slot(static_cast<size_t>(R * W));
  src.read(s, static_cast<uint64_t>(g.parts.front().in.slot * R * W) * 2,
           {reinterpret_cast<uint8_t*>(slot.data()), slot.size() * 2});
  for (const auto& part : g.parts)
    run_bf16_quant(part, src, sink, part.in.cols, 0, part.in.cols, slot.data());
}

// Inputs sharing block scales, BF16: rows sharing a scale row are runs, so the SIMD amax and
// quantize kernels apply run by run. Two passes over row chunks (block amax of every input, then
// quantization), since a scale row can take rows from several inputs.
void run_group_bf16(const GroupQuantTask& t, const TensorSource& src, TensorSink& sink) {
  const size_t n_in = t.in.size();
  std::vector<int64_t> rows(n_in, 0);
  int64_t cols = 0;
  for (size_t p = 0; p < n_in; ++p) {
    if (!t.in[p]) continue;
    rows[p] = static_cast<int64_t>(t.in[p]->src->shape[0]);
    cols = static_cast<int64_t>(t.in[p]->src->shape[1]);
  }
  const int64_t sc = ceil_div(cols, t.block_cols);
  std::vector<std::vector<float>> scales(t.scale_rows.size());
  for (size_t i = 0; i < scales.size(); ++i)
    scales[i].assign(static_cast<size_t>(t.scale_rows[i] * sc), 0.0f);
  // Each row's scale row.
  std::vector<std::vector<float*>> row_scale(n_in);
  for (size_t p = 0; p < n_in; ++p)
    for (const auto& run : t.runs[p])
      for (int64_t r = run.row0; r < run.row1; ++r)
        row_scale[p].push_back(&scales[run.tensor][static_cast<size_t>(run.scale_row * sc)]);
  const int64_t max_rows = std::max<int64_t>(1, *std::max_element(rows.begin(), rows.end()));
  const int64_t chunk = t.chunk_rows > 0 ? std::min(t.chunk_rows, max_rows) : max_rows;
  exec::RawBuffer<uint16_t> data(static_cast<size_t>(chunk * cols));
  auto read_rows = [&](size_t p, int64_t r0, int64_t r1) {
    const SourceTensor& s = *t.in[p]->src;
    src.read(s, static_cast<uint64_t>(r0 * cols) * 2,
             {reinterpret_cast<uint8_t*>(data.data()), static_cast<size_t>((r1 - r0) * cols) * 2});
  };
  for (size_t p = 0; p < n_in; ++p) {
    if (!t.in[p]) continue;
    for (int64_t c0 = 0; c0 < rows[p]; c0 += chunk) {
      const int64_t c1 = std::min(rows[p], c0 + chunk);
      read_rows(p, c0, c1);
      const size_t n = static_cast<size_t>((c1 - c0) * cols);
      for (size_t i = 0; i < n; ++i)
        if ((data[i] & 0x7F80) == 0x7F80)
          fail_non_finite(*t.in[p], c0 + static_cast<int64_t>(i) / cols,
                          static_cast<int64_t>(i) % cols, numerics::bf16_to_f32(data[i]));
      for (const auto& run : t.runs[p]) {
        const int64_t a = std::max(run.row0, c0), e = std::min(run.row1, c1);
        if (a >= e) continue;
        kernels::block_amax_bf16(data.data() + (a - c0) * cols, e - a, cols, cols, false, e - a,
                                 t.block_cols, row_scale[p][static_cast<size_t>(a)], sc);
      }
    }
  }
  for (auto& v : scales) numerics::amax_to_scales(v);
  exec::RawBuffer<uint8_t> codes(static_cast<size_t>(chunk * cols));
  for (size_t p = 0; p < n_in; ++p) {
    if (!t.in[p]) continue;
    for (int64_t c0 = 0; c0 < rows[p]; c0 += chunk) {
      const int64_t c1 = std::min(rows[p], c0 + chunk);
      read_rows(p, c0, c1);
      std::vector<const float*> rs(row_scale[p].begin() + c0, row_scale[p].begin() + c1);
      kernels::QuantArgs q;
      q.src = data.data();
      q.rows = c1 - c0;
      q.cols = cols;
      q.src_ld = cols;
      q.dst = codes.data();
      q.dst_ld = cols;
      q.mode = kernels::QuantArgs::kSaturating;
      q.row_scale = rs.data();
      q.block_cols = t.block_cols;
      kernels::quant_bf16_to_fp8(q);
      sink.write(*t.out_weight[p], static_cast<uint64_t>(c0 * cols),
                 codes.bytes().first(static_cast<size_t>((c1 - c0) * cols)));
    }
  }
  for (size_t i = 0; i < scales.size(); ++i)
    if (t.out_scale[i]) sink.write(*t.out_scale[i], 0, float_bytes(scales[i]));
}

void run(const GroupQuantTask& t, const TensorSource& src, TensorSink& sink) {
  bool bf16 = true;
  for (const auto& v : t.in) bf16 = bf16 && (!v || (v->slot < 0 && v->src->dtype == Dtype::BF16));
  if (bf16) {
    run_group_bf16(t, src, sink);
    return;
  }
  const size_t n_in = t.in.size();
  std::vector<std::vector<float>> x(n_in);
  std::vector<LoadedMatrix> m(n_in);
  int64_t sc = 0;
  for (size_t p = 0; p < n_in; ++p) {
    if (!t.in[p]) continue;
    m[p] = exec::load_matrix(src, *t.in[p]);
    sc = ceil_div(m[p].cols, t.block_cols);
    const size_t esize = dtype_size(t.in[p]->src->dtype);
    x[p].resize(static_cast<size_t>(m[p].rows * m[p].cols));
    for (size_t i = 0; i < x[p].size(); ++i)
      x[p][i] = exec::element_to_float(t.in[p]->src->dtype, &m[p].raw[i * esize]);
    check_finite(*t.in[p], m[p], x[p]);
  }
  std::vector<std::vector<float>> scales(t.scale_rows.size());
  for (size_t i = 0; i < scales.size(); ++i)
    scales[i].assign(static_cast<size_t>(t.scale_rows[i] * sc), 0.0f);
  std::vector<std::vector<float*>> row_scale(n_in);
  std::vector<std::vector<uint8_t>> codes(n_in);
  std::vector<Fp8Rows> rows;
  for (size_t p = 0; p < n_in; ++p) {
    if (!t.in[p]) continue;
    row_scale[p] = run_row_scales(*t.in[p], t.runs[p], m[p].rows, scales, sc);
    codes[p].resize(x[p].size());
    rows.push_back({x[p], row_scale[p], codes[p]});
  }
  std::vector<std::vector<float>*> all;
  for (auto& v : scales) all.push_back(&v);
  int64_t cols = 0;
  for (size_t p = 0; p < n_in; ++p)
    if (t.in[p]) cols = m[p].cols;
  quantize_fp8_blocks(rows, cols, t.block_cols, all);
  for (size_t p = 0; p < n_in; ++p)
    if (t.in[p]) sink.write(*t.out_weight[p], 0, codes[p]);
  for (size_t i = 0; i < scales.size(); ++i)
    if (t.out_scale[i]) sink.write(*t.out_scale[i], 0, float_bytes(scales[i]));
}

void run(const GatherQuantTask& t, const TensorSource& src, TensorSink& sink) {
  const int64_t rows = t.row1 - t.row0, cols = t.cols;
  std::vector<float> x(static_cast<size_t>(rows * cols));
  for (const auto& seg : t.segments) {
    const MatrixView v{seg.src};
    LoadedMatrix m = exec::load_matrix(src, v, seg.src_row0, seg.src_row0 + seg.rows);
    const size_t esize = dtype_size(seg.src->dtype);
    float* dst = &x[static_cast<size_t>((seg.out_row0 - t.row0) * cols)];
    for (size_t i = 0; i < static_cast<size_t>(m.rows * m.cols); ++i)
      dst[i] = exec::element_to_float(seg.src->dtype, &m.raw[i * esize]);
    check_finite(v, m, std::vector<float>(dst, dst + m.rows * m.cols), seg.src_row0);
  }
  const int64_t sc = ceil_div(cols, t.block_cols), sr = ceil_div(rows, t.block_rows);
  std::vector<float> scales(static_cast<size_t>(sr * sc), 0.0f);
  std::vector<float*> row_scale(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r)
    row_scale[static_cast<size_t>(r)] = &scales[static_cast<size_t>((r / t.block_rows) * sc)];
  std::vector<uint8_t> codes(x.size());
  quantize_fp8_blocks({{x, row_scale, codes}}, cols, t.block_cols, {&scales});
  sink.write(t.out_weight, static_cast<uint64_t>(t.row0 * cols), codes);
  sink.write(t.out_scale, static_cast<uint64_t>(t.scale_row0 * sc) * 4, float_bytes(scales));
}

// Counts delivered bytes for progress reporting.
class ObservedSink final : public TensorSink {
 public:
  ObservedSink(TensorSink& inner, const std::function<void(size_t, uint64_t)>& cb)
      : inner_(inner), cb_(cb) {}
  void write(size_t out, uint64_t offset, std::span<const uint8_t> bytes) override {
    inner_.write(out, offset, bytes);
    cb_(out, bytes.size());
  }

 private:
  TensorSink& inner_;
  const std::function<void(size_t, uint64_t)>& cb_;
};

uint64_t matrix_bytes(const SourceTensor& t, int64_t rows) {
  const uint64_t cols = t.shape.size() > 1 ? t.shape[1] : 1;
  return static_cast<uint64_t>(rows) * cols;
}

// ExecOptions::check_only: what run() would refuse, nothing converted or written.
class DiscardSink final : public TensorSink {
 public:
  void write(size_t, uint64_t, std::span<const uint8_t>) override {}
};

void check_input(const DequantInput& in, int64_t row0, int64_t row1, Dtype out,
                 const TensorSource& src) {
  if (in.mx_scale) {  // table-driven and small: its conversion into scratch is its check
    const uint64_t cols = 2 * in.weight->shape[1];
    exec::RawBuffer<uint8_t> scratch(static_cast<size_t>(in.weight->shape[0] * cols) *
                                     dtype_size(out));
    exec::dequant_mxfp4_into(src, in, out, scratch.data(), static_cast<int64_t>(cols), false);
  } else if (in.weight->dtype == Dtype::F8_E4M3) {
    exec::dequant_fp8_into(src, in, row0, row1, out, nullptr, 0, false);  // scan, no kernel
  } else {
    (void)exec::dequant_products(src, in, row0, row1);  // BF16/F16/F32 inputs: NaN refusals
  }
}

void check_task(const CopyTask&, const TensorSource&) {}
void check_task(const DequantTask& t, const TensorSource& src) {
  check_input(t.in, t.row0, t.row1, t.out_dtype, src);
}
void check_task(const ExpertSlotTask& t, const TensorSource& src) {
  for (const auto& [in, _] : t.parts) check_input(in, 0, -1, t.out_dtype, src);
}
// Quantizing tasks (no load plan has them): the whole run, its output dropped.
template <class T>
void check_task(const T& t, const TensorSource& src) {
  DiscardSink none;
  run(t, src, none);
}

// "2202010 bytes (2.10 MiB)": exact, so that two amounts never print alike.
std::string bytes_and_mib(uint64_t b) {
  return fmt::format("{} bytes ({:.2f} MiB)", b, static_cast<double>(b) / (1 << 20));
}

}  // namespace

MemoryBudget MemoryBudget::split(uint64_t max_memory, unsigned threads) {
  threads = std::max(1u, threads);
  MemoryBudget b;
  // A quarter for the caches whatever the thread count (a per-thread share rounded down would
  // make the in-flight share jump back by up to a byte per thread as the budget grows).
  b.cache_per_thread = std::min<uint64_t>(256ull << 20, max_memory / 4 / threads);
  b.in_flight = max_memory - max_memory / 4;
  return b;
}

uint64_t MemoryBudget::needed_for(uint64_t need) {
  // The smallest m with m - floor(m / 4) >= need: m = floor(4 (need - 1) / 3) + 1.
  if (need == 0) return 0;
  const uint64_t x = need - 1;
  const uint64_t third = x / 3;
  if (x > std::numeric_limits<uint64_t>::max() - third - 1)
    return std::numeric_limits<uint64_t>::max();
  return x + third + 1;
}

std::vector<std::pair<int64_t, int64_t>> split_rows(int64_t rows, uint64_t row_bytes,
                                                    uint64_t target_bytes, int64_t align) {
  std::vector<std::pair<int64_t, int64_t>> out;
  if (row_bytes == 0 || rows == 0) return {{0, rows}};
  int64_t step = static_cast<int64_t>(target_bytes / row_bytes);
  step = std::max<int64_t>(align, step / align * align);
  for (int64_t r = 0; r < rows; r += step) out.emplace_back(r, std::min(rows, r + step));
  if (out.empty()) out.emplace_back(0, rows);
  return out;
}

// Asks the source to read ahead what a task will read.
void prefetch(const Task& task, const TensorSource& src) {
  for (const auto& r : task_reads(task))
    if (!r.scale && r.end > r.begin) src.prefetch(*r.tensor, r.begin, r.end - r.begin);
}

std::vector<SourceRange> task_reads(const Task& task) {
  struct Visitor {
    std::vector<SourceRange>& out;
    void whole(const SourceTensor* t) const { out.push_back({t, 0, t->nbytes}); }
    void scales(const DequantInput& in) const {
      if (in.mx_scale) whole(in.mx_scale);  // read whole
      if (in.scale)
        for (const auto* t : in.scale->tensors) out.push_back({t, 0, t->nbytes, true});
    }
    void operator()(const CopyTask& t) const {
      const auto [begin, end] = copy_byte_range(t);
      if (begin < end) out.push_back({t.src, begin, end});
    }
    void operator()(const DequantTask& t) const {
      const uint64_t cols = t.in.weight->shape[1], esize = dtype_size(t.in.weight->dtype);
      const int64_t row1 = t.row1 < 0 ? static_cast<int64_t>(t.in.weight->shape[0]) : t.row1;
      out.push_back({t.in.weight, static_cast<uint64_t>(t.row0) * cols * esize,
                     static_cast<uint64_t>(row1) * cols * esize});
      scales(t.in);
    }
    void operator()(const ExpertSlotTask& t) const {
      for (const auto& [in, _] : t.parts) {
        whole(in.weight);
        scales(in);
      }
    }
    void operator()(const EmitTask& t) const {
      if (t.in.slot < 0) return whole(t.in.src);
      const uint64_t slot = t.in.src->nbytes / t.in.src->shape[0];
      out.push_back({t.in.src, static_cast<uint64_t>(t.in.slot) * slot,
                     static_cast<uint64_t>(t.in.slot + 1) * slot});
    }
    void operator()(const SlotGroupTask& g) const { (*this)(g.parts.front()); }
    void operator()(const GroupQuantTask& t) const {
      for (const auto& v : t.in)
        if (v) whole(v->src);
    }
    void operator()(const GatherQuantTask& t) const {
      for (const auto& seg : t.segments) {
        const uint64_t row = seg.src->shape.at(1) * dtype_size(seg.src->dtype);
        out.push_back({seg.src, static_cast<uint64_t>(seg.src_row0) * row,
                       static_cast<uint64_t>(seg.src_row0 + seg.rows) * row});
      }
    }
  };
  std::vector<SourceRange> out;
  std::visit(Visitor{out}, task);
  return out;
}

std::vector<size_t> task_outputs(const Task& task) {
  struct Visitor {
    std::vector<size_t> operator()(const CopyTask& t) const { return {t.out}; }
    std::vector<size_t> operator()(const DequantTask& t) const { return {t.out}; }
    std::vector<size_t> operator()(const ExpertSlotTask& t) const { return {t.out}; }
    std::vector<size_t> operator()(const EmitTask& t) const {
      if (t.out_scale) return {t.out_weight, *t.out_scale};
      return {t.out_weight};
    }
    std::vector<size_t> operator()(const SlotGroupTask& g) const {
      std::vector<size_t> out;
      for (const auto& p : g.parts) {
        auto o = (*this)(p);
        out.insert(out.end(), o.begin(), o.end());
      }
      return out;
    }
    std::vector<size_t> operator()(const GatherQuantTask& t) const {
      return {t.out_weight, t.out_scale};
    }
    std::vector<size_t> operator()(const GroupQuantTask& t) const {
      std::vector<size_t> out;
      for (const auto& w : t.out_weight)
        if (w) out.push_back(*w);
      for (const auto& sc : t.out_scale)
        if (sc) out.push_back(*sc);
      return out;
    }
  };
  return std::visit(Visitor{}, task);
}

uint64_t task_memory(const Task& task) {
  // Upper bounds of what each run() above holds at once: its buffers (rounded up to whole blocks),
  // and a block's worth for the small ones (scales, row pointers).
  constexpr uint64_t kSmall = 2ull << 20;
  auto block = [](uint64_t n) -> uint64_t { return exec::detail::block_bytes(n); };
  struct Visitor {
    decltype(block)& b;
    // One input weight dequantized on its own (an expert part, a row range).
    uint64_t dequant_input(const DequantInput& in, uint64_t elems) const {
      if (in.mx_scale) return b(in.weight->nbytes) + b(in.mx_scale->nbytes);
      const uint64_t raw = elems * dtype_size(in.weight->dtype);
      return in.weight->dtype == Dtype::F8_E4M3 ? b(raw) : raw + elems * 4 + kSmall;
    }
    uint64_t operator()(const CopyTask& t) const {
      if (t.convert_to) {  // the input chunk, its floats and the converted chunk
        const uint64_t elems =
            std::min<uint64_t>(t.src->nbytes / dtype_size(t.src->dtype),
                               std::max<uint64_t>(1, t.chunk_bytes / dtype_size(t.src->dtype)));
        return b(elems * dtype_size(t.src->dtype)) + elems * 4 +
               b(elems * dtype_size(*t.convert_to)) + kSmall;
      }
      return b(std::min<uint64_t>(t.src->nbytes, std::max<uint64_t>(1, t.chunk_bytes)));
    }
    uint64_t operator()(const DequantTask& t) const {
      const int64_t rows =
          (t.row1 < 0 ? static_cast<int64_t>(t.in.weight->shape[0]) : t.row1) - t.row0;
      const uint64_t elems = matrix_bytes(*t.in.weight, rows);
      const uint64_t out = elems * dtype_size(t.out_dtype);
      return b(out) + dequant_input(t.in, elems) + kSmall;
    }
    uint64_t operator()(const ExpertSlotTask& t) const {
      // Parts are dequantized one after the other into the one slot buffer.
      uint64_t part = 0;
      for (const auto& [in, _] : t.parts)
        part = std::max(part, dequant_input(in, in.weight->nbytes / dtype_size(in.weight->dtype)));
      return b(static_cast<uint64_t>(t.rows * t.cols) * dtype_size(t.out_dtype)) + part + kSmall;
    }
    uint64_t operator()(const EmitTask& t) const { return emit(t, false); }
    // `slot_loaded`: part of a SlotGroupTask, whose slot buffer is counted once by the group.
    uint64_t emit(const EmitTask& t, bool slot_loaded) const {
      const SourceTensor& s = *t.in.src;
      const int64_t rows =
          t.in.slot >= 0
              ? t.in.cols
              : (t.row1 < 0 ? static_cast<int64_t>(s.shape.empty() ? 1 : s.shape[0]) : t.row1) -
                    t.row0;
      const uint64_t cols = t.in.slot >= 0 ? s.shape[1] : (s.shape.size() > 1 ? s.shape[1] : 1);
      const uint64_t elems = static_cast<uint64_t>(rows) * cols;
      const uint64_t esize = dtype_size(s.dtype);
      const uint64_t slot = t.in.slot >= 0 ? s.shape[1] * s.shape[2] * esize : 0;
      if (t.mode != QuantMode::kNone && s.dtype == Dtype::BF16)  // run_bf16_quant
        return (slot_loaded ? 0 : b(slot)) + (slot ? 0 : b(elems * 2)) + b(elems) + kSmall;
      // load_matrix (slot copy and the view), floats, codes.
      return slot + elems * (esize + 4 + 1) + kSmall;
    }
    uint64_t operator()(const SlotGroupTask& g) const {
      const SourceTensor& s = *g.parts.front().in.src;
      if (s.dtype != Dtype::BF16 || g.parts.front().mode == QuantMode::kNone) {
        uint64_t n = 0;  // parts run one after the other
        for (const auto& p : g.parts) n = std::max(n, emit(p, false));
        return n;
      }
      uint64_t n = 0;
      for (const auto& p : g.parts) n = std::max(n, emit(p, true));
      return b(s.shape[1] * s.shape[2] * 2) + n;
    }
    uint64_t operator()(const GatherQuantTask& t) const {
      // Each segment's raw rows (one at a time), the floats, their copy for the finite check, and
      // the codes.
      uint64_t raw = 0;
      for (const auto& seg : t.segments)
        raw = std::max<uint64_t>(
            raw, static_cast<uint64_t>(seg.rows * t.cols) * dtype_size(seg.src->dtype));
      const auto elems = static_cast<uint64_t>((t.row1 - t.row0) * t.cols);
      return b(raw) * 2 + elems * 4 + elems + kSmall;
    }
    uint64_t operator()(const GroupQuantTask& t) const {
      bool bf16 = true;
      uint64_t max_rows = 1, cols = 0, all = 0;
      for (const auto& v : t.in) {
        if (!v) continue;
        bf16 = bf16 && v->slot < 0 && v->src->dtype == Dtype::BF16;
        all += v->src->nbytes + v->src->nbytes / dtype_size(v->src->dtype) * (4 + 1);
        if (v->src->shape.size() == 2) {
          max_rows = std::max<uint64_t>(max_rows, v->src->shape[0]);
          cols = v->src->shape[1];
        }
      }
      const uint64_t chunk = t.chunk_rows > 0
                                 ? std::min<uint64_t>(max_rows, static_cast<uint64_t>(t.chunk_rows))
                                 : max_rows;
      // run_group_bf16: a chunk of BF16 rows, its codes, the scales and row pointers.
      return (bf16 ? b(chunk * cols * 2) + b(chunk * cols) + t.in.size() * max_rows * 8 : all) +
             kSmall;
    }
  };
  return std::visit(Visitor{block}, task);
}

uint64_t memory_needed(const Plan& plan) {
  uint64_t need = 0;
  for (const auto& t : plan.tasks) need = std::max(need, task_memory(t));
  return MemoryBudget::needed_for(need);
}

void check_memory_budget(const Plan& plan, const ExecOptions& options, uint64_t at_least) {
  const MemoryBudget budget = MemoryBudget::split(options.max_memory, 1);
  // The largest task, so that the budget named holds every task of the plan, not only the first
  // one found too large.
  size_t largest = 0;
  uint64_t need = 0;
  for (size_t i = 0; i < plan.tasks.size(); ++i)
    if (const uint64_t n = task_memory(plan.tasks[i]); n > need) {
      need = n;
      largest = i;
    }
  if (need <= budget.in_flight) return;
  const auto outs = task_outputs(plan.tasks[largest]);
  const auto smallest = std::to_string(std::max(at_least, MemoryBudget::needed_for(need)));
  fail(ErrorKind::kInvalidArgument, "", outs.empty() ? "" : plan.outputs[outs.front()].name,
       // The task is compared with the in-flight share, not the whole budget: both are named,
       // in bytes, so that the numbers never read as "2.1 MiB is more than 2.8 MiB".
       fmt::format("its conversion holds {} of buffers at once, more than the {} that a memory "
                   "budget of {} leaves for tasks in flight (the rest keeps freed buffers for "
                   "reuse)",
                   bytes_and_mib(need), bytes_and_mib(budget.in_flight),
                   bytes_and_mib(options.max_memory)),
       fmt::format("a memory budget of at least {} bytes: {}", smallest,
                   option_ref(CallerOption::kMaxMemory, smallest)));
}

void execute(const Plan& plan, const TensorSource& source, TensorSink& sink_in,
             const ExecOptions& options) {
  // A MOECKPT_ISA the kernels refuse stops every run before its first task, kernels or not.
  (void)kernels::best_isa();
  std::optional<ObservedSink> observed;
  if (options.on_write) observed.emplace(sink_in, options.on_write);
  TensorSink& sink = observed ? static_cast<TensorSink&>(*observed) : sink_in;
  unsigned threads = exec::default_threads(options.threads);
  threads =
      std::min<unsigned>(threads, static_cast<unsigned>(std::max<size_t>(1, plan.tasks.size())));
  // The budget covers the buffers of the tasks in flight and the freed buffers each thread keeps
  // for reuse (a quarter of the budget at most), so the resident set stays within it.
  const MemoryBudget budget = MemoryBudget::split(options.max_memory, threads);
  check_memory_budget(plan, options);
  // Tasks start in plan order; one waits while the buffers in flight plus its own would exceed the
  // budget (a task larger than the whole budget runs alone).
  size_t next = 0;
  uint64_t in_use = 0;
  bool failed = false;
  std::exception_ptr error;
  std::mutex mutex;
  std::condition_variable cv;
  auto worker = [&]() {
    exec::ScopedBufferCache cache(budget.cache_per_thread);
    for (;;) {
      size_t i;
      uint64_t need;
      {
        std::unique_lock lock(mutex);
        if (next >= plan.tasks.size() || failed) return;
        if (options.cancel && options.cancel->load()) {
          if (!error)
            error = std::make_exception_ptr(
                Interrupted({ErrorKind::kInterrupted, "", "",
                             "interrupted before the conversion finished", ""}));
          failed = true;
          cv.notify_all();
          return;
        }
        i = next++;
        // Read-ahead in plan order: the task `threads` places ahead of this one.
        if (i + threads < plan.tasks.size()) prefetch(plan.tasks[i + threads], source);
        need = task_memory(plan.tasks[i]);
        cv.wait(lock, [&] { return failed || in_use + need <= budget.in_flight; });
        if (failed) return;
        in_use += need;
      }
      try {
        if (options.check_only)
          std::visit([&](const auto& task) { check_task(task, source); }, plan.tasks[i]);
        else
          std::visit([&](const auto& task) { run(task, source, sink); }, plan.tasks[i]);
      } catch (...) {
        std::lock_guard lock(mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
      {
        std::lock_guard lock(mutex);
        in_use -= need;
      }
      cv.notify_all();
    }
  };
  exec::run_worker_threads(threads, worker);
  if (error) std::rethrow_exception(error);
}

}  // namespace moeckpt
