#include <array>
#include <string_view>

#include "moeckpt/adapter.hpp"
#include "moeckpt/tensor_key.hpp"

namespace moeckpt {

bool should_quantize_key(std::string_view key) {
  if (!key.ends_with(".weight")) return false;
  if (key.starts_with("visual.") || key.starts_with("audio.")) return false;
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
