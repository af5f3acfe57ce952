#pragma once
// The whole validation a conversion of a folder would do, for verify and inspect: it plans the
// conversion (the planners call the checks of validate.hpp; this file sits above both, so the
// checks never call a planner).
#include "moeckpt/model_config.hpp"
#include "moeckpt/tensor_source.hpp"

namespace moeckpt {

struct ValidateOptions {
  bool scan_data = true;  // read scales and weights (false: headers and config only)
  unsigned threads = 0;
};
// HF folders as from-hf sees them, native folders as to-hf does (plan + data scans).
void validate_checkpoint(const TensorSource& src, const ModelConfig& config,
                         const ValidateOptions& options = {});

}  // namespace moeckpt
