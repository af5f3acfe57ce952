// The Qwen3-MoE checkpoint family: the shared Hugging Face MoE layout (model/hf_moe_spec.hpp) with
// per-head q/k RMSNorms in every layer, biases on all four attention projections when
// attention_bias is set (transformers' Qwen3MoeAttention; the releases set it false), no shared
// experts, no router bias, no MTP. A layer is MoE unless listed in mlp_only_layers, every
// decoder_sparse_step-th layer (transformers' Qwen3MoeDecoderLayer; Automodel's Block is the same).
//
// Precision: the BF16 releases are BF16 throughout; the -FP8 releases (quantization_config
// quant_method "fp8", weight_block_size [128, 128], modules_to_not_convert lm_head, the norms and
// mlp.gate) store every attention and MLP projection, experts included, as FP8 E4M3 with a
// weight_scale_inv of [ceil(out/128), ceil(in/128)] (BF16 in Qwen3-30B-A3B-Thinking-2507-FP8's
// header dump; read in any float dtype, written F32), and embeddings, lm_head, norms and the
// router in BF16.
//
// NeMo Automodel 0.7.0's Qwen3MoeStateDictAdapter groups the routed experts with the MoE mixin
// (gate_and_up_projs [E, hidden, 2 * moe_intermediate], gate first; down_projs) and keeps every
// other name; it has no FP8 path (from_hf drops every _scale_inv and keeps the codes; to_hf
// ignores quantization=True), so the compat mode refuses FP8 input and never casts.
#include "model/qwen3_moe/qwen3_moe_spec.hpp"

#include "model/config_fields.hpp"
#include "model/hf_moe_spec.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {
namespace {

using json = nlohmann::json;

json qwen3_moe_architecture(const char* dimensions) {
  json c = json::parse(R"({
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_act": "silu",
    "attention_bias": false, "attention_dropout": 0.0, "initializer_range": 0.02,
    "rms_norm_eps": 1e-6, "decoder_sparse_step": 1, "mlp_only_layers": [],
    "norm_topk_prob": true, "output_router_logits": false, "router_aux_loss_coef": 0.001,
    "rope_scaling": null, "rope_theta": 1000000.0, "sliding_window": null,
    "use_sliding_window": false, "max_window_layers": 48, "tie_word_embeddings": false,
    "torch_dtype": "bfloat16", "use_cache": true, "bos_token_id": 151643,
    "eos_token_id": 151645})");
  c.update(json::parse(dimensions));
  return c;
}

// Qwen/Qwen3-30B-A3B and Qwen/Qwen3-235B-A22B (config.json).
json qwen3_30b_a3b() {
  return qwen3_moe_architecture(R"({
    "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
    "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
    "max_position_embeddings": 40960})");
}
json qwen3_235b_a22b() {
  return qwen3_moe_architecture(R"({
    "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288,
    "moe_intermediate_size": 1536, "num_hidden_layers": 94, "num_attention_heads": 64,
    "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
    "max_position_embeddings": 40960, "max_window_layers": 94})");
}

// Every feature at toy size: dimensions off multiples of 128 (ragged FP8 blocks), a head_dim
// other than hidden/heads, attention biases, one dense layer among MoE ones.
json qwen3_moe_tiny() {
  return qwen3_moe_architecture(R"({
    "vocab_size": 512, "hidden_size": 320, "intermediate_size": 448,
    "moe_intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 96, "num_experts": 8, "num_experts_per_tok": 2,
    "attention_bias": true, "mlp_only_layers": [1], "max_position_embeddings": 4096,
    "max_window_layers": 3})");
}

// The smallest with those features, for hostile-input corpora (~200 KB in FP8): q rows over 128
// (ragged), a dense layer 0 and a MoE layer 1 of 4 experts.
json qwen3_moe_micro() {
  return qwen3_moe_architecture(R"({
    "vocab_size": 32, "hidden_size": 136, "intermediate_size": 40, "moe_intermediate_size": 24,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 72,
    "num_experts": 4, "num_experts_per_tok": 2, "attention_bias": true, "mlp_only_layers": [0],
    "max_position_embeddings": 4096, "max_window_layers": 2})");
}

std::optional<json> qwen3_moe_base_preset(std::string_view name) {
  if (name == "qwen3-moe-tiny") return qwen3_moe_tiny();
  if (name == "qwen3-moe-micro") return qwen3_moe_micro();
  if (name == "qwen3-30b-a3b") return qwen3_30b_a3b();
  if (name == "qwen3-235b-a22b") return qwen3_235b_a22b();
  return std::nullopt;
}

}  // namespace

bool is_qwen3_moe_model_type(std::string_view model_type) {
  return model_type == "qwen3_moe";
}

ModelConfig parse_qwen3_moe_config(const json& doc, const std::string& file) {
  ModelConfig c = parse_common_fields(doc, file);
  parse_hf_moe_attention(doc, file, c);
  parse_routed_experts(doc, file, c, "num_experts");
  FieldReader f(doc, file);
  f.boolean("attention_bias", false);
  const int64_t step = f.count("decoder_sparse_step", 1, c.num_hidden_layers);
  if (step == 0)
    fail(ErrorKind::kMalformedFile, file, "", "config field \"decoder_sparse_step\" is 0",
         "a positive integer");
  std::vector<bool> dense(static_cast<size_t>(c.num_hidden_layers), false);
  if (auto m = doc.find("mlp_only_layers"); m != doc.end() && !m->is_null()) {
    if (!m->is_array())
      fail(ErrorKind::kMalformedFile, file, "", "config field \"mlp_only_layers\" is " + m->dump(),
           "a list of layer indices");
    for (const auto& l : *m) {
      if (!l.is_number_integer() || l.get<int64_t>() < 0)
        fail(ErrorKind::kMalformedFile, file, "",
             "config field \"mlp_only_layers\" holds " + l.dump(),
             "layer indices (non-negative integers)");
      if (l.get<int64_t>() < c.num_hidden_layers)
        dense[static_cast<size_t>(l.get<int64_t>())] = true;
    }
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    c.layer_is_moe.push_back(!dense[static_cast<size_t>(l)] && (l + 1) % step == 0);
  return c;
}

std::unique_ptr<const ModelSpec> make_qwen3_moe_spec(const ModelConfig& config) {
  const std::string file = "config.json";  // parse_qwen3_moe_config checked the field
  const bool bias = FieldReader(config.raw, file).boolean("attention_bias", false);
  HfMoeLayout l;
  l.name = "Qwen3-MoE";
  l.qkv_bias = l.o_bias = bias;
  l.qk_norm = QkNorm::kPerHead;
  l.compat_fp8_refusal =
      "Automodel 0.7.0's Qwen3-MoE adapter has no FP8 path: it drops every weight_scale_inv and "
      "keeps the FP8 codes unscaled";
  return make_hf_moe_spec(config, l);
}

const std::vector<std::string>& qwen3_moe_preset_names() {
  static const std::vector<std::string> names{
      "qwen3-moe-tiny",    "qwen3-moe-tiny-fp8", "qwen3-moe-micro-fp8", "qwen3-30b-a3b",
      "qwen3-30b-a3b-fp8", "qwen3-235b-a22b",    "qwen3-235b-a22b-fp8"};
  return names;
}

std::optional<json> qwen3_moe_preset(std::string_view name, const PresetSize& size) {
  const bool fp8 = name.ends_with("-fp8");
  auto base = qwen3_moe_base_preset(fp8 ? name.substr(0, name.size() - 4) : name);
  if (!base) return std::nullopt;
  json c = resize_hf_moe_preset(*base, size, "num_experts");
  if (fp8) c["quantization_config"] = block_fp8_quantization_config();
  return c;
}

}  // namespace moeckpt
