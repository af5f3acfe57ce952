// The MiniMax-M2 checkpoint family: the shared Hugging Face MoE layout (model/hf_moe_spec.hpp)
// with the MoE block under block_sparse_moe (router block_sparse_moe.gate.weight, published F32;
// block_sparse_moe.e_score_correction_bias, F32; experts block_sparse_moe.experts.E.w1 / w3 / w2 =
// gate / up / down), q/k RMSNorms over the whole projection ([heads * head_dim], where
// use_qk_norm), no attention biases, no shared experts, every layer MoE with experts
// intermediate_size wide (transformers' MiniMaxM2 modeling; Automodel's MiniMaxM2 model).
//
// Precision (MiniMax-M2's safetensors header scan; quantization_config quant_method "fp8",
// weight_block_size [128, 128], modules_to_not_convert gate, e_score_correction_bias, lm_head):
// q/k/v/o and the experts FP8 E4M3 with F32 weight_scale_inv; router and its bias F32;
// embeddings, lm_head and norms BF16. The config's use_mtp / num_mtp_modules describe MTP modules
// the release does not hold (its tensor count is 62 layers x 1550 + 3), so there are none here.
//
// NeMo Automodel 0.7.0's MiniMaxM2StateDictAdapter: from_hf dequantizes every weight that has a
// weight_scale_inv (128x128 blocks, the DeepSeek-V3 rule), renames the router and experts to
// mlp.gate / mlp.experts and groups them as the MoE mixin does; to_hf(quantization=True) casts
// every ".weight" whose HF name holds none of its NON_QUANTIZED_KEY_PATTERNS (o_proj included)
// with scales of ones.
#include "model/minimax_m2/minimax_m2_spec.hpp"

#include "model/config_fields.hpp"
#include "model/hf_moe_spec.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {
namespace {

using json = nlohmann::json;

constexpr std::array<std::string_view, 9> kMiniMaxCastExcluded = {"input_layernorm.weight",
                                                                  "post_attention_layernorm.weight",
                                                                  "norm.weight",
                                                                  "lm_head.weight",
                                                                  "embed_tokens.weight",
                                                                  "self_attn.q_norm.weight",
                                                                  "self_attn.k_norm.weight",
                                                                  "block_sparse_moe.gate.weight",
                                                                  "mlp.gate.weight"};

json minimax_m2_architecture(const char* dimensions) {
  json c = json::parse(R"({
    "architectures": ["MiniMaxM2ForCausalLM"], "model_type": "minimax_m2", "hidden_act": "silu",
    "attention_dropout": 0.0, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
    "scoring_func": "sigmoid", "use_routing_bias": true, "use_qk_norm": true,
    "qk_norm_type": "per_layer", "rope_theta": 5000000, "tie_word_embeddings": false,
    "torch_dtype": "bfloat16", "use_cache": true, "bos_token_id": 200019,
    "eos_token_id": 200020, "use_mtp": true, "num_mtp_modules": 3, "mtp_transformer_layers": 1,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "float8_e4m3fn",
      "quant_method": "fp8", "weight_block_size": [128, 128],
      "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"]}})");
  c.update(json::parse(dimensions));
  return c;
}

// MiniMaxAI/MiniMax-M2 (config.json).
json minimax_m2_full() {
  return minimax_m2_architecture(R"({
    "vocab_size": 200064, "hidden_size": 3072, "intermediate_size": 1536,
    "num_hidden_layers": 62, "num_attention_heads": 48, "num_key_value_heads": 8,
    "head_dim": 128, "rotary_dim": 64, "num_local_experts": 256, "num_experts_per_tok": 8,
    "max_position_embeddings": 196608})");
}

// Every feature at toy size: ragged FP8 blocks (hidden 320, q rows 384, k 192, experts 96 wide),
// full-width q/k norms, two MoE layers of 8 experts.
json minimax_m2_tiny() {
  return minimax_m2_architecture(R"({
    "vocab_size": 512, "hidden_size": 320, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 96, "rotary_dim": 48,
    "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 4096})");
}

// The smallest with those features, for hostile-input corpora (~150 KB).
json minimax_m2_micro() {
  return minimax_m2_architecture(R"({
    "vocab_size": 32, "hidden_size": 136, "intermediate_size": 24, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 72, "rotary_dim": 36,
    "num_local_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 4096})");
}

}  // namespace

bool is_minimax_m2_model_type(std::string_view model_type) {
  return model_type == "minimax_m2";
}

ModelConfig parse_minimax_m2_config(const json& doc, const std::string& file) {
  ModelConfig c = parse_common_fields(doc, file, "intermediate_size");
  parse_hf_moe_attention(doc, file, c);
  // num_experts is transformers' alias; a config with neither is told the published name.
  const bool alias = doc.contains("num_experts") && !doc.contains("num_local_experts");
  parse_routed_experts(doc, file, c, alias ? "num_experts" : "num_local_experts");
  FieldReader(doc, file).boolean("use_qk_norm", false);
  c.layer_is_moe.assign(static_cast<size_t>(c.num_hidden_layers), true);
  return c;
}

std::unique_ptr<const ModelSpec> make_minimax_m2_spec(const ModelConfig& config) {
  const std::string file = "config.json";  // parse_minimax_m2_config checked the field
  const bool qk_norm = FieldReader(config.raw, file).boolean("use_qk_norm", false);
  HfMoeLayout l;
  l.name = "MiniMax-M2";
  l.qk_norm = qk_norm ? QkNorm::kFullWidth : QkNorm::kNone;
  l.router_correction_bias = l.router_f32 = true;
  l.hf_router = "block_sparse_moe.gate.weight";
  l.hf_router_bias = "block_sparse_moe.e_score_correction_bias";
  l.hf_experts = "block_sparse_moe.experts";
  l.hf_expert_leaves = {"w1", "w3", "w2"};
  l.compat_cast_excluded = kMiniMaxCastExcluded;
  return make_hf_moe_spec(config, l);
}

const std::vector<std::string>& minimax_m2_preset_names() {
  static const std::vector<std::string> names{"minimax-m2-tiny", "minimax-m2-micro", "minimax-m2"};
  return names;
}

std::optional<json> minimax_m2_preset(std::string_view name, const PresetSize& size) {
  std::optional<json> base;
  if (name == "minimax-m2-tiny") base = minimax_m2_tiny();
  if (name == "minimax-m2-micro") base = minimax_m2_micro();
  if (name == "minimax-m2") base = minimax_m2_full();
  if (!base) return std::nullopt;
  return resize_hf_moe_preset(*base, size, "num_local_experts");
}

}  // namespace moeckpt
