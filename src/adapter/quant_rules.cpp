#include <array>
#include <string_view>

#include "moeckpt/adapter.hpp"
#include "moeckpt/tensor_key.hpp"

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

bool should_quantize_key(std::string_view key, Compat version) {
  if (!key.ends_with(".weight")) return false;
  if (version != Compat::kAutomodel06 && (key.starts_with("visual.") || key.starts_with("audio.")))
    return false;
  static constexpr std::array<std::string_view, 7> kExcluded = {"input_layernorm.weight",
                                                                "post_attention_layernorm.weight",
                                                                "norm.weight",
                                                                "lm_head.weight",
                                                                "embed_tokens.weight",
                                                                "mlp.gate.weight",
                                                                "self_attn.o_proj.weight"};
  for (auto s : kExcluded)
    if (key.find(s) != std::string_view::npos) return false;
  return true;
}

bool is_published_fp8_key(std::string_view key) {
  auto k = classify_tensor_name(key);
  if (k.is_scale) return false;
  switch (k.kind) {
    case TensorKind::kAttentionProj:
      return k.projection != Projection::kO;
    case TensorKind::kDenseMlpProj:
    case TensorKind::kExpertProj:
      return true;
    default:
      return false;
  }
}

}  // namespace moeckpt
