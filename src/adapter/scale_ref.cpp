#include "adapter/scale_ref.hpp"

#include <fmt/format.h>

#include "moeckpt/error.hpp"
#include "moeckpt/model_spec.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {
namespace {

bool is_scale_dtype(Dtype d) {
  return d == Dtype::F32 || d == Dtype::BF16 || d == Dtype::F16;
}

// The shared q/k/v scale layout when this attention layer's k scale reveals it.
std::optional<FusedQkvLayout> fused_layout(const TensorSource& src, const SourceTensor& w,
                                           const TensorKey& key, const ModelSpec& spec,
                                           int64_t block_rows) {
  const auto k_scale_name =
      spec.block_scale_name(spec.attention_weight_name(w.name, Projection::kK));
  const auto* k_scale = k_scale_name ? src.find(*k_scale_name) : nullptr;
  if (!k_scale || k_scale->shape.size() != 2) return std::nullopt;
  std::array<int64_t, 3> weight_rows{-1, -1, -1};
  for (Projection p : kQkv)
    if (const auto* t = src.find(spec.attention_weight_name(w.name, p)); t && t->shape.size() == 2)
      weight_rows[qkv_index(p)] = static_cast<int64_t>(t->shape[0]);
  auto fused = spec.detect_shared_qkv_scales(key, static_cast<int64_t>(k_scale->shape[0]),
                                             block_rows, weight_rows);
  if (!fused) return std::nullopt;
  if (static_cast<int64_t>(w.shape[0]) != fused->rows(key.projection))
    fail(ErrorKind::kConfigMismatch, w.file, w.name,
         "has " + std::to_string(w.shape[0]) +
             " rows but the fused K/V layout of this layer needs " +
             std::to_string(fused->rows(key.projection)));
  return fused;
}

}  // namespace

ScaleRef resolve_scale_ref(const TensorSource& src, const SourceTensor& w, const SourceTensor& s,
                           const TensorKey& key, const ModelSpec& spec, const ScaleRefOptions& o) {
  if (w.shape.size() != 2)
    fail(ErrorKind::kMalformedFile, w.file, w.name,
         "weight of shape " + format_shape(w.shape) + " has a scale but is not 2-D",
         "a 2-D [out, in] weight");
  if (s.shape.size() != 2)
    fail(ErrorKind::kMalformedFile, s.file, s.name,
         "scale of shape " + format_shape(s.shape) + " is not 2-D");
  if (!is_scale_dtype(s.dtype))
    fail(ErrorKind::kMalformedFile, s.file, s.name,
         "scale dtype " + std::string(dtype_name(s.dtype)), "F32, BF16 or F16");
  ScaleRef ref;
  ref.block_rows = o.block.rows;
  ref.block_cols = o.block.cols;
  ref.check_values = o.check_values;
  const auto rows = static_cast<int64_t>(w.shape[0]), cols = static_cast<int64_t>(w.shape[1]);
  const int64_t need_cols = ceil_div(cols, o.block.cols);
  if (o.detect_fused && key.kind == TensorKind::kAttentionProj &&
      key.projection != Projection::kO) {
    if (auto fused = fused_layout(src, w, key, spec, o.block.rows)) {
      ref.runs = scale_runs(*fused, key.projection);
      ref.tensors.assign(3, nullptr);
      ref.used_rows.assign(3, 0);
      for (Projection p : kQkv) {
        const std::string name = *spec.block_scale_name(spec.attention_weight_name(w.name, p));
        const auto* qs = src.find(name);
        if (!qs)
          fail(ErrorKind::kMalformedFile, w.file, name,
               "missing: the fused K/V scale layout of this layer needs the q, k and v scales");
        if (qs->shape.size() != 2 || !is_scale_dtype(qs->dtype) ||
            static_cast<int64_t>(qs->shape[0]) < fused->scale_rows(p) ||
            static_cast<int64_t>(qs->shape[1]) < need_cols)
          fail(ErrorKind::kConfigMismatch, qs->file, qs->name,
               "scale " + format_shape(qs->shape) + " is too small for the fused K/V layout",
               fmt::format("at least [{}, {}]", fused->scale_rows(p), need_cols));
        ref.tensors[qkv_index(p)] = qs;
        ref.used_rows[qkv_index(p)] = fused->scale_rows(p);
      }
      return ref;
    }
  }
  const int64_t need_rows = ceil_div(rows, o.block.rows);
  if (static_cast<int64_t>(s.shape[0]) < need_rows || static_cast<int64_t>(s.shape[1]) < need_cols)
    fail(ErrorKind::kConfigMismatch, s.file, s.name,
         "scale " + format_shape(s.shape) + " is too small for weight " + format_shape(w.shape),
         fmt::format("at least [{}, {}] for {}x{} blocks", need_rows, need_cols, o.block.rows,
                     o.block.cols));
  ref.tensors = {&s};
  ref.used_rows = {need_rows};
  return ref;
}

std::vector<ScaleRun> scale_runs(const FusedQkvLayout& layout, Projection p) {
  std::vector<ScaleRun> runs;
  for (int64_t r = 0; r < layout.rows(p); ++r) {
    const auto s = layout.scale_source(p, r);
    const auto tensor = static_cast<uint32_t>(qkv_index(s.owner));
    if (!runs.empty() && runs.back().tensor == tensor && runs.back().scale_row == s.scale_row)
      runs.back().row1 = r + 1;
    else
      runs.push_back({r, r + 1, tensor, s.scale_row});
  }
  return runs;
}

}  // namespace moeckpt
