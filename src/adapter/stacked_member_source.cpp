#include "adapter/stacked_member_source.hpp"

#include <fmt/format.h>

#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {

StackedMemberSource::StackedMemberSource(const TensorSource& base, const ModelSpec& spec)
    : base_(base) {
  const int64_t E = spec.config().n_routed_experts;
  for (const auto& t : base.tensors()) {
    SourceTensor self = t;
    self.stored = &t;
    self.slice_offset = 0;
    if (!spec.stacked_expert_member(t.name, 0)) {
      tensors_.push_back(std::move(self));
      continue;
    }
    uint64_t cols = 1;
    for (size_t i = 2; i < t.shape.size(); ++i) cols *= t.shape[i];
    const std::vector<uint64_t> member{t.shape.size() > 1 ? t.shape[1] : 0, cols};
    const auto want = spec.stacked_shape(t.name, member, E);
    if (t.dtype != Dtype::U8 || t.shape.size() < 2 || t.shape != want)
      fail(ErrorKind::kConfigMismatch, t.file, t.name,
           fmt::format("stacked MXFP4 expert tensor {} {} is not one of n_routed_experts = {} "
                       "experts",
                       dtype_name(t.dtype), format_shape(t.shape), E),
           "U8 " + format_shape(want));
    const uint64_t slice = t.shape[1] * cols;
    for (int64_t e = 0; e < E; ++e) {
      SourceTensor m = self;
      m.name = *spec.stacked_expert_member(t.name, e);
      m.shape = {t.shape[1], cols};
      m.nbytes = slice;
      m.slice_offset = static_cast<uint64_t>(e) * slice;
      tensors_.push_back(std::move(m));
    }
  }
  index();
}

std::shared_ptr<const std::vector<SourceTensor>> StackedMemberSource::release_views() {
  return std::make_shared<const std::vector<SourceTensor>>(std::move(tensors_));
}

}  // namespace moeckpt
