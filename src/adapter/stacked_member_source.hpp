#pragma once
// An HF source as planning sees it when the family stacks a layer's experts in one tensor per
// projection (ModelSpec::hf_experts_stacked): each stacked tensor [E, out, ...] is replaced by its
// E members, 2-D [out, bytes of the rest] views of one expert's slice (SourceTensor::stored), so
// that the per-expert planning (grouping, EP ranges, MXFP4 decoding) reads only the experts it
// needs. Every other tensor is a view of itself. Reads go to the underlying source.
#include <memory>
#include <vector>

#include "moeckpt/model_spec.hpp"
#include "moeckpt/tensor_source.hpp"

namespace moeckpt {

class StackedMemberSource final : public TensorSource {
 public:
  // Refuses a stacked tensor that is not [n_routed_experts, out, ...] of U8.
  StackedMemberSource(const TensorSource& base, const ModelSpec& spec);
  void read(const SourceTensor& t, uint64_t offset, std::span<uint8_t> out) const override {
    base_.read(t, offset, out);
  }
  void prefetch(const SourceTensor& t, uint64_t offset, uint64_t bytes) const override {
    base_.prefetch(t, offset, bytes);
  }
  std::map<std::string, std::string> metadata(size_t part) const override {
    return base_.metadata(part);
  }
  size_t parts() const override { return base_.parts(); }
  std::map<std::string, std::string> index_metadata(size_t part) const override {
    return base_.index_metadata(part);
  }
  // The views, for a plan to keep (Plan::views); the source is empty afterwards.
  std::shared_ptr<const std::vector<SourceTensor>> release_views();

 private:
  const TensorSource& base_;
};

}  // namespace moeckpt
