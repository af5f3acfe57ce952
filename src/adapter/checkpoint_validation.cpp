#include "adapter/checkpoint_validation.hpp"

#include "adapter/validate.hpp"
#include "moeckpt/adapter.hpp"

namespace moeckpt {

void validate_checkpoint(const TensorSource& src, const ModelConfig& config,
                         const ValidateOptions& o) {
  const auto spec = model_spec_for(config);
  if (is_native_layout(src, *spec)) {
    auto starts = check_native_metadata(src, *spec);
    ToHfOptions th;
    // One EP rank's folder holds only its experts.
    auto md = src.metadata(0);
    auto ws = md.find(kMetaEpSize);
    th.require_all_experts = src.parts() > 1 || ws == md.end() || ws->second == "1";
    // A fused-QKV family's published layout needs a whole folder; the split export validates
    // every tensor just the same.
    if (spec->hf_qkv_fused()) th.quant = QuantMode::kNone;
    (void)plan_to_hf(src, config, th, starts);
    if (o.scan_data) scan_native_non_finite(src, *spec, o.threads);
    return;
  }
  FromHfOptions fh;
  fh.prescan_scales = o.scan_data;
  (void)plan_from_hf(src, config, fh);
  if (o.scan_data) scan_fp8_nan_codes(src, o.threads);
}

}  // namespace moeckpt
