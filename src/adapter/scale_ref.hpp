#pragma once
// Which block scales dequantize a weight: its own plain grid, or the fused Q/K/V layout its
// attention layer's k scale reveals. Shared by from-hf planning and verify, with every shape check.
#include "moeckpt/model_spec.hpp"
#include "moeckpt/plan.hpp"
#include "moeckpt/scale_layout.hpp"
#include "moeckpt/tensor_key.hpp"

namespace moeckpt {

struct ScaleRefOptions {
  BlockSize block;
  bool detect_fused = true;  // false: the plain grid everywhere (Automodel)
  bool check_values = true;  // refuse zero/negative/non-finite scale values when read
};

// `w` has the companion `s` (its `_scale_inv`); `key` classifies `w`.
ScaleRef resolve_scale_ref(const TensorSource& src, const SourceTensor& w, const SourceTensor& s,
                           const TensorKey& key, const ModelSpec& spec,
                           const ScaleRefOptions& options);

// The runs of rows of projection `p` (q, k or v) that share a scale row in the fused layout; the
// run's tensor is the owning projection's index (q 0, k 1, v 2).
std::vector<ScaleRun> scale_runs(const FusedQkvLayout& layout, Projection p);

}  // namespace moeckpt
