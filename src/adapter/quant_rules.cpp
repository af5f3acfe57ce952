#include <fmt/format.h>

#include <string_view>

#include "adapter/quant_rules.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {

std::string_view attn_backend_name(AttnBackend b) noexcept {
  return b == AttnBackend::kTe ? "te" : "sdpa";
}

std::optional<AttnBackend> parse_attn_backend(std::string_view name) {
  if (name == "sdpa") return AttnBackend::kSdpa;
  if (name == "te") return AttnBackend::kTe;
  return std::nullopt;
}

std::string_view compat_name(Compat c) noexcept {
  switch (c) {
    case Compat::kAutomodel06:
      return "automodel-0.6";
    case Compat::kAutomodel07:
      return "automodel-0.7";
    case Compat::kNone:
      break;
  }
  return "none";
}

std::optional<Compat> parse_compat(std::string_view name) {
  if (name == "none") return Compat::kNone;
  if (name == "automodel") return kNewestAutomodel;
  if (name == "automodel-0.6") return Compat::kAutomodel06;
  if (name == "automodel-0.7") return Compat::kAutomodel07;
  return std::nullopt;
}

void require_reproduced(const ModelSpec& spec, Compat compat) {
  if (!spec.reproduces(compat))
    fail(ErrorKind::kInvalidArgument, "", "",
         fmt::format("compat mode {} for a {} checkpoint: that Automodel version is not reproduced "
                     "for this family",
                     compat_name(compat), spec.layout_name()),
         "automodel (automodel-0.7) or none");
}

QuantMode effective_quant(const ToHfOptions& o) noexcept {
  switch (o.compat) {
    case Compat::kAutomodel06:
      return QuantMode::kCast;
    case Compat::kAutomodel07:
      return o.quant == QuantMode::kNone ? QuantMode::kNone : QuantMode::kCast;
    case Compat::kNone:
      break;
  }
  return o.quant;
}

bool export_writes_fp8(const ModelSpec& spec, const ToHfOptions& o) noexcept {
  switch (effective_quant(o)) {
    case QuantMode::kNone:
      return false;
    case QuantMode::kCast:
      return spec.compat_casts();
    case QuantMode::kBlock:  // a stacked MXFP4 layout writes MXFP4, no FP8
      return !spec.hf_experts_stacked() && (o.hf_source || spec.publishes_fp8());
  }
  return false;
}

bool should_quantize_key(std::string_view key, Compat version) {
  return reference_model_spec().compat_quantizes(key, version);
}

bool is_published_fp8_key(std::string_view key) {
  return reference_model_spec().is_published_fp8(key);
}

}  // namespace moeckpt
