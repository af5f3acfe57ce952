#include "model/hf_tensor_names.hpp"

#include <fmt/format.h>

#include <charconv>

namespace moeckpt {

std::optional<int64_t> take_index(std::string_view& s) {
  const size_t dot = s.find('.');
  if (dot == 0 || dot == std::string_view::npos || dot > 9) return std::nullopt;
  const auto digits = s.substr(0, dot);
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;
  int64_t v = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (ec != std::errc() || p != digits.data() + digits.size()) return std::nullopt;
  s.remove_prefix(dot + 1);
  return v;
}

std::optional<LayerPath> split_layer_path(std::string_view name) {
  size_t pos = 0;
  while ((pos = name.find("layers.", pos)) != std::string_view::npos) {
    if (pos == 0 || name[pos - 1] == '.') break;
    ++pos;
  }
  if (pos == std::string_view::npos) return std::nullopt;
  auto rest = name.substr(pos + 7);
  auto layer = take_index(rest);
  if (!layer) return std::nullopt;
  return LayerPath{name.substr(0, pos), *layer, rest};
}

void classify_model_level(std::string_view w, TensorKey& k) {
  if (w == "lm_head.weight") {
    k.kind = TensorKind::kLmHead;
  } else if (w.ends_with("embed_tokens.weight") && (w.size() == 19 || w[w.size() - 20] == '.')) {
    k.kind = TensorKind::kEmbedding;
    k.prefix = std::string(w.substr(0, w.size() - 19));
  } else if (w.ends_with("norm.weight") && (w.size() == 11 || w[w.size() - 12] == '.')) {
    k.kind = TensorKind::kFinalNorm;
    k.prefix = std::string(w.substr(0, w.size() - 11));
  }
}

std::optional<std::string> block_scale_name_of(std::string_view weight) {
  if (!weight.ends_with(".weight")) return std::nullopt;
  return std::string(weight) + std::string(kBlockScaleSuffix);
}

std::string expert_weight_name_of(std::string_view prefix, int64_t layer, int64_t expert,
                                  Projection p) {
  return fmt::format("{}layers.{}.mlp.experts.{}.{}.weight", prefix, layer, expert,
                     projection_name(p));
}

std::string grouped_experts_name_of(std::string_view prefix, int64_t layer, Projection grouped) {
  return fmt::format("{}layers.{}.mlp.experts.{}", prefix, layer,
                     grouped == Projection::kDown ? "down_projs" : "gate_and_up_projs");
}

std::string self_attn_prefix(std::string_view name) {
  constexpr std::string_view kSelfAttn = "self_attn.";
  const auto at = name.rfind(kSelfAttn);
  return std::string(name.substr(0, at == std::string_view::npos ? 0 : at + kSelfAttn.size()));
}

bool is_automodel_expert_prefix(std::string_view p) {
  return p.empty() || p == "model." || p == "language_model." || p == "model.language_model.";
}

}  // namespace moeckpt
