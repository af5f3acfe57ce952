// The MiMo family's synth presets: the architecture's fixed choices with tiny, micro and real
// (MiMo-V2-Flash) dimensions, and the same in the MiMo-V2.6 and MiMo-V2.5-Pro layouts.
#include <algorithm>
#include <optional>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/mimo/mimo_spec.hpp"
#include "model/preset_size.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {
namespace {

using json = nlohmann::json;

// What every preset shares: the architecture's fixed choices (attention sinks, rope, routing).
json preset_config(const char* dimensions) {
  json c = json::parse(R"({
    "architectures": ["MiMoV2FlashForCausalLM"], "model_type": "mimo_v2_flash",
    "sliding_window": 128, "sliding_window_size": 128,
    "add_swa_attention_sink_bias": true, "add_full_attention_sink_bias": false,
    "attention_value_scale": 0.707, "attention_bias": false, "partial_rotary_factor": 0.334,
    "rope_theta": 5000000, "swa_rope_theta": 10000, "layernorm_epsilon": 1e-5,
    "hidden_act": "silu", "n_shared_experts": null, "scoring_func": "sigmoid",
    "topk_method": "noaux_tc", "n_group": 1, "topk_group": 1, "norm_topk_prob": true,
    "routed_scaling_factor": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16"})");
  c.update(json::parse(dimensions));
  return c;
}

json full_config() {
  json c = preset_config(R"({
    "vocab_size": 152576, "hidden_size": 4096, "intermediate_size": 16384,
    "moe_intermediate_size": 2048, "num_hidden_layers": 48,
    "num_attention_heads": 64, "num_key_value_heads": 4, "head_dim": 192, "v_head_dim": 128,
    "swa_num_attention_heads": 64, "swa_num_key_value_heads": 8, "swa_head_dim": 192,
    "swa_v_head_dim": 128, "max_position_embeddings": 262144, "n_routed_experts": 256,
    "num_experts_per_tok": 8})");
  std::vector<int> pattern(48, 1);
  for (int l : {0, 5, 11, 17, 23, 29, 35, 41, 47}) pattern[static_cast<size_t>(l)] = 0;
  std::vector<int> moe(48, 1);
  moe[0] = 0;
  c["hybrid_layer_pattern"] = pattern;
  c["moe_layer_freq"] = moe;
  return c;
}

json tiny_config() {
  return preset_config(R"({
    "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128,
    "num_hidden_layers": 4, "hybrid_layer_pattern": [0, 1, 1, 0], "moe_layer_freq": [0, 1, 1, 1],
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 192, "v_head_dim": 128,
    "swa_num_attention_heads": 8, "swa_num_key_value_heads": 8, "swa_head_dim": 192,
    "swa_v_head_dim": 128, "max_position_embeddings": 4096, "n_routed_experts": 8,
    "num_experts_per_tok": 2})");
}

// The smallest checkpoint with the structural features a malformed-input corpus needs (~120 KB):
// a dense full-attention layer and a sliding-window MoE layer with sinks, dimensions over 128
// (several scale blocks, ragged last blocks), 4 experts, no MTP layer.
json micro_config() {
  return preset_config(R"({
    "vocab_size": 32, "hidden_size": 136, "intermediate_size": 40, "moe_intermediate_size": 24,
    "num_hidden_layers": 2, "hybrid_layer_pattern": [0, 1], "moe_layer_freq": [0, 1],
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "v_head_dim": 16,
    "swa_num_attention_heads": 2, "swa_num_key_value_heads": 2, "swa_head_dim": 32,
    "swa_v_head_dim": 16, "max_position_embeddings": 4096, "n_routed_experts": 4,
    "num_experts_per_tok": 2})");
}

// The V2-Flash preset in a fused-QKV layout: MiMo-V2.6 (model_type mimo_v2) or MiMo-V2.5-Pro.
json fused_layout(json c, bool v25) {
  c["model_type"] = "mimo_v2";
  c["architectures"] = {v25 ? "MiMoV25ForCausalLM" : "MiMoV2ForCausalLM"};
  c["attention_projection_layout"] = "fused_qkv";
  return c;
}

std::optional<json> mimo_base_preset(std::string_view name) {
  const auto dims = name.substr(name.find('-') == std::string_view::npos ? 0 : name.find('-') + 1);
  auto plain = [](std::string_view d) -> std::optional<json> {
    if (d == "tiny") return tiny_config();
    if (d == "full") return full_config();
    if (d == "micro") return micro_config();
    return std::nullopt;
  };
  if (name.starts_with("v26-") && dims != "micro")
    if (auto c = plain(dims)) return fused_layout(*c, false);
  if (name.starts_with("v25-") && dims != "micro")
    if (auto c = plain(dims)) return fused_layout(*c, true);
  if (name.find('-') == std::string_view::npos) return plain(name);
  return std::nullopt;
}

}  // namespace

const std::vector<std::string>& mimo_preset_names() {
  static const std::vector<std::string> names{"tiny",     "micro",    "full",    "v26-tiny",
                                              "v26-full", "v25-tiny", "v25-full"};
  return names;
}

std::optional<json> mimo_preset(std::string_view name, const PresetSize& o) {
  auto base = mimo_base_preset(name);
  if (!base) return std::nullopt;
  json c = *base;
  if (o.layers) {
    const int64_t n = c["num_hidden_layers"].get<int64_t>();
    check_preset_option("layers", *o.layers, 1, n);
    auto trim = [&](const char* key) {
      auto v = c[key].get<std::vector<int>>();
      v.resize(static_cast<size_t>(*o.layers));
      c[key] = v;
    };
    trim("hybrid_layer_pattern");
    trim("moe_layer_freq");
    c["num_hidden_layers"] = *o.layers;
  }
  resize_experts_and_vocab(c, o);
  json ignored = json::array();
  for (int64_t i = 0; i < c["num_hidden_layers"].get<int64_t>(); ++i)
    ignored.push_back("model.layers." + std::to_string(i) + ".self_attn.o_proj");
  c["quantization_config"] = {{"activation_scheme", "dynamic"},
                              {"fmt", "e4m3"},
                              {"quant_method", "fp8"},
                              {"weight_block_size", {128, 128}},
                              {"ignored_layers", ignored}};
  return c;
}

}  // namespace moeckpt
