// The GLM-4.5 checkpoint family: the shared Hugging Face MoE layout (model/hf_moe_spec.hpp) with
// q/k/v biases when attention_bias is set (o_proj never has one), per-head q/k RMSNorms when
// use_qk_norm is set, dense layers below first_k_dense_replace, MoE layers with an F32
// e_score_correction_bias and n_shared_experts shared experts, and num_nextn_predict_layers (alias
// num_mtp_layers, transformers' default 1) MTP layers stored as layers.<num_hidden_layers + i>,
// each a MoE layer plus enorm, hnorm, eh_proj and shared_head.norm (transformers' Glm4Moe* and its
// config; the published indexes).
//
// Precision: GLM-4.5, -Air and 4.6 are BF16 (the router bias F32). The -FP8 releases are
// compressed-tensors with per-channel F32 weight_scale (not block scales): refused by name until
// moeckpt converts that format.
//
// NeMo Automodel 0.7.0's Glm4MoeStateDictAdapter is the MoE mixin's (as Qwen3-MoE's): experts
// grouped gate then up, every other name kept, MTP layers' experts grouped too (its pattern takes
// any layer index), no FP8 path, quantization=True ignored.
#include "model/glm4_moe/glm4_moe_spec.hpp"

#include "model/config_fields.hpp"
#include "model/hf_moe_spec.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {
namespace {

using json = nlohmann::json;

json glm4_moe_architecture(const char* dimensions) {
  json c = json::parse(R"({
    "architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", "hidden_act": "silu",
    "attention_bias": true, "attention_dropout": 0.0, "initializer_range": 0.02,
    "rms_norm_eps": 1e-5, "first_k_dense_replace": 1, "n_shared_experts": 1,
    "norm_topk_prob": true, "n_group": 1, "topk_group": 1, "partial_rotary_factor": 0.5,
    "rope_scaling": null, "rope_theta": 1000000, "num_nextn_predict_layers": 1,
    "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
    "use_qk_norm": false, "pad_token_id": 151329, "eos_token_id": [151329, 151336, 151338]})");
  c.update(json::parse(dimensions));
  return c;
}

// zai-org/GLM-4.5 and zai-org/GLM-4.5-Air (config.json).
json glm45() {
  return glm4_moe_architecture(R"({
    "vocab_size": 151552, "hidden_size": 5120, "intermediate_size": 12288,
    "moe_intermediate_size": 1536, "num_hidden_layers": 92, "num_attention_heads": 96,
    "num_key_value_heads": 8, "head_dim": 128, "n_routed_experts": 160,
    "num_experts_per_tok": 8, "first_k_dense_replace": 3, "routed_scaling_factor": 2.5,
    "use_qk_norm": true, "max_position_embeddings": 131072})");
}
json glm45_air() {
  return glm4_moe_architecture(R"({
    "vocab_size": 151552, "hidden_size": 4096, "intermediate_size": 10944,
    "moe_intermediate_size": 1408, "num_hidden_layers": 46, "num_attention_heads": 96,
    "num_key_value_heads": 8, "head_dim": 128, "n_routed_experts": 128,
    "num_experts_per_tok": 8, "first_k_dense_replace": 1, "routed_scaling_factor": 1.0,
    "max_position_embeddings": 131072})");
}

// Every feature at toy size: ragged FP8 blocks, a head_dim other than hidden/heads, q/k/v biases
// and q/k norms, a dense layer, a shared expert, an MTP layer.
json glm4_moe_tiny() {
  return glm4_moe_architecture(R"({
    "vocab_size": 512, "hidden_size": 320, "intermediate_size": 448,
    "moe_intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 96, "n_routed_experts": 8, "num_experts_per_tok": 2,
    "routed_scaling_factor": 2.5, "use_qk_norm": true, "max_position_embeddings": 4096})");
}

// The smallest with those features, for hostile-input corpora (~700 KB): q rows over 128, a dense
// layer 0, a MoE layer 1 of 4 experts and a shared one, the MTP layer 2.
json glm4_moe_micro() {
  return glm4_moe_architecture(R"({
    "vocab_size": 32, "hidden_size": 136, "intermediate_size": 40, "moe_intermediate_size": 24,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 72,
    "n_routed_experts": 4, "num_experts_per_tok": 2, "use_qk_norm": true,
    "max_position_embeddings": 4096})");
}

std::optional<json> glm4_moe_base_preset(std::string_view name) {
  if (name == "glm4-moe-tiny") return glm4_moe_tiny();
  if (name == "glm4-moe-micro") return glm4_moe_micro();
  if (name == "glm-4.5") return glm45();
  if (name == "glm-4.5-air") return glm45_air();
  return std::nullopt;
}

}  // namespace

bool is_glm4_moe_model_type(std::string_view model_type) {
  return model_type == "glm4_moe";
}

ModelConfig parse_glm4_moe_config(const json& doc, const std::string& file) {
  if (doc.is_object())
    if (auto q = doc.find("quantization_config"); q != doc.end() && q->is_object())
      if (auto m = q->find("quant_method"); m != q->end() && *m == "compressed-tensors")
        fail(ErrorKind::kUnsupportedLayout, file, "",
             "quantization_config is compressed-tensors (per-channel FP8 weight_scale, the "
             "GLM-4.5-FP8 releases), which moeckpt does not convert",
             "the BF16 release, or block FP8 (quant_method \"fp8\" with weight_block_size)");
  ModelConfig c = parse_common_fields(doc, file);
  parse_hf_moe_attention(doc, file, c);
  parse_routed_experts(doc, file, c, "n_routed_experts");
  FieldReader f(doc, file);
  f.boolean("attention_bias", false);
  f.boolean("use_qk_norm", false);
  const int64_t first_moe = f.count("first_k_dense_replace", 1, c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) c.layer_is_moe.push_back(l >= first_moe);
  c.n_shared_experts = f.count("n_shared_experts", 1, 1 << 10);
  const bool nextn = doc.contains("num_nextn_predict_layers");
  c.num_nextn_predict_layers =
      f.count(nextn ? "num_nextn_predict_layers" : "num_mtp_layers", 1, 64);
  return c;
}

std::unique_ptr<const ModelSpec> make_glm4_moe_spec(const ModelConfig& config) {
  const std::string file = "config.json";  // parse_glm4_moe_config checked the fields
  const FieldReader f(config.raw, file);
  HfMoeLayout l;
  l.name = "GLM-4.5";
  l.qkv_bias = f.boolean("attention_bias", false);
  l.qk_norm = f.boolean("use_qk_norm", false) ? QkNorm::kPerHead : QkNorm::kNone;
  l.router_correction_bias = true;
  l.compat_fp8_refusal =
      "Automodel 0.7.0's GLM-4.5 adapter has no FP8 path: it drops every weight_scale_inv and "
      "keeps the FP8 codes unscaled";
  return make_hf_moe_spec(config, l);
}

const std::vector<std::string>& glm4_moe_preset_names() {
  static const std::vector<std::string> names{"glm4-moe-tiny", "glm4-moe-tiny-fp8",
                                              "glm4-moe-micro", "glm-4.5", "glm-4.5-air"};
  return names;
}

// glm4-moe-tiny-fp8 is the tiny one in 128x128 block FP8 (what `quantize` makes of a BF16 release).
std::optional<json> glm4_moe_preset(std::string_view name, const PresetSize& size) {
  const bool fp8 = name == "glm4-moe-tiny-fp8";
  auto base = glm4_moe_base_preset(fp8 ? name.substr(0, name.size() - 4) : name);
  if (!base) return std::nullopt;
  json c = resize_hf_moe_preset(*base, size, "n_routed_experts", "first_k_dense_replace");
  if (fp8) c["quantization_config"] = block_fp8_quantization_config();
  return c;
}

}  // namespace moeckpt
