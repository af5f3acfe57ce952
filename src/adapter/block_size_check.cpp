#include "adapter/block_size_check.hpp"

#include <fmt/format.h>

#include <map>
#include <utility>

#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {
namespace {

// Along one axis: how many weights have `dim` elements and `blocks` scale entries, with the
// first such scale as the example an error names.
struct AxisGrids {
  std::map<std::pair<int64_t, int64_t>, std::pair<int64_t, const SourceTensor*>> counts;

  void add(int64_t dim, int64_t blocks, const SourceTensor* scale) {
    auto& [n, example] = counts[{dim, blocks}];
    if (n++ == 0) example = scale;
  }
  static bool fits(int64_t dim, int64_t blocks, int64_t block) {
    return (dim + block - 1) / block == blocks;
  }
  int64_t support(int64_t block) const {
    int64_t n = 0;
    for (const auto& [k, v] : counts)
      if (fits(k.first, k.second, block)) n += v.first;
    return n;
  }
  // The block size (other than `configured`) that the most grids fit, with that count. Powers of
  // two are tried first, so the message names 128 rather than some other size the grids fit.
  std::pair<int64_t, int64_t> best_other(int64_t configured) const {
    std::pair<int64_t, int64_t> best{0, -1};
    auto consider = [&](int64_t candidate) {
      if (candidate == configured) return;
      const int64_t n = support(candidate);
      if (n > best.second) best = {candidate, n};
    };
    for (int64_t p = 1; p <= kMaxBlockSize; p *= 2) consider(p);
    for (const auto& [k, v] : counts)
      consider((k.first + k.second - 1) / k.second);  // the smallest block this grid fits
    return best;
  }
};

}  // namespace

void check_block_size_matches_scales(const TensorSource& src, const ModelSpec& spec,
                                     const BlockSize& block) {
  AxisGrids rows, cols;
  int64_t total = 0;
  for (const auto& s : src.tensors()) {
    if (!spec.is_block_scale(s.name) || s.shape.size() != 2) continue;
    const auto key = spec.classify(s.name);
    const auto* w = src.find(key.weight_name);
    // Fused QKV weights carry one grid per checkpoint TP shard (checked by the planner).
    if (!w || w->shape.size() != 2 || key.projection == Projection::kQkv) continue;
    const auto R = static_cast<int64_t>(w->shape[0]), C = static_cast<int64_t>(w->shape[1]);
    const auto SR = static_cast<int64_t>(s.shape[0]), SC = static_cast<int64_t>(s.shape[1]);
    if (R == 0 || C == 0 || SR == 0 || SC == 0)
      continue;  // nothing to scale; sizes checked elsewhere
    rows.add(R, SR, &s);
    cols.add(C, SC, &s);
    ++total;
  }
  auto check = [&](const AxisGrids& axis, int64_t configured, bool is_rows) {
    const int64_t agree = axis.support(configured);
    const auto [other, n] = axis.best_other(configured);
    if (n <= agree) return;  // the configured size fits at least as many grids as any other
    // Name a grid the configured block size does not fit and the other one does.
    const SourceTensor* example = nullptr;
    for (const auto& [k, v] : axis.counts)
      if (!AxisGrids::fits(k.first, k.second, configured) &&
          AxisGrids::fits(k.first, k.second, other)) {
        example = v.second;
        break;
      }
    const auto* w = src.find(spec.classify(example->name).weight_name);
    const size_t a = is_rows ? 0 : 1;
    const auto dim = static_cast<int64_t>(w->shape[a]);
    fail(ErrorKind::kConfigMismatch, example->file, example->name,
         fmt::format("scale {} of weight {} has {} block {} where config.json's weight_block_size "
                     "[{}, {}] gives {}: the scale grids of {} of {} FP8 weights fit {}-element "
                     "blocks along {}, only {} fit {}",
                     format_shape(example->shape), format_shape(w->shape), example->shape[a],
                     is_rows ? "rows" : "columns", block.rows, block.cols,
                     (dim + configured - 1) / configured, n, total, other,
                     is_rows ? "rows" : "columns", agree, configured),
         "a quantization_config.weight_block_size that matches the scale grids (extra trailing "
         "scale rows/columns are accepted as padding on some weights, not on most)");
  };
  check(rows, block.rows, true);
  check(cols, block.cols, false);
}

}  // namespace moeckpt
