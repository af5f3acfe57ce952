// The gpt-oss checkpoint family: the shared Hugging Face MoE layout (model/hf_moe_spec.hpp) with
// the routed experts stacked per layer in MXFP4 (HfMoeLayout::stacked_mxfp4_experts), expert
// biases, the router under mlp.router (weight and bias), biases on all four attention
// projections, attention sinks (self_attn.sinks), sliding and full attention alternating by
// layer_types with the same projection shapes, every layer MoE, experts intermediate_size wide,
// no shared experts and no MTP (transformers' GptOss modeling).
//
// Precision (openai/gpt-oss-20b and -120b: config.json quantization_config {quant_method "mxfp4",
// modules_to_not_convert self_attn, mlp.router, embed_tokens, lm_head} and the safetensors
// headers): the experts' gate_up_proj and down_proj as _blocks (U8 [E, out, in / 32, 16]) and
// _scales (U8 E8M0 [E, out, in / 32]); everything else BF16, expert biases, router and sinks
// included.
//
// NeMo Automodel 0.7.0's GPTOSSStateDictAdapter: from_hf decodes each _blocks/_scales pair with a
// BF16 lookup of the E2M1 values and torch.ldexp (the product rounded once to BF16; E8M0 0xFF is
// 2^128, infinite, not NaN), transposes to [E, in, out] with gate/up rows still interleaved,
// renames gate_up_proj / down_proj to gate_and_up_projs / down_projs and mlp.router to mlp.gate
// (sinks to self_attn.attn_module.softmax_offset under TE), and ignores the device mesh (the EP
// slice comes later, from DCP); to_hf renames back and, with quantization=True, writes all-ones
// placeholders of 90 groups whatever the shape, so the compat mode refuses a quantized export.
#include "model/gpt_oss/gpt_oss_spec.hpp"

#include <fmt/format.h>

#include "model/config_fields.hpp"
#include "model/hf_moe_spec.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {
namespace {

using json = nlohmann::json;

json gpt_oss_architecture(const char* dimensions) {
  json c = json::parse(R"({
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": true,
    "attention_dropout": 0.0, "eos_token_id": 200002, "pad_token_id": 199999,
    "hidden_act": "silu", "initial_context_length": 4096, "initializer_range": 0.02,
    "rms_norm_eps": 1e-05, "rope_theta": 150000, "router_aux_loss_coef": 0.9,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
      "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": false},
    "sliding_window": 128, "swiglu_limit": 7.0, "tie_word_embeddings": false,
    "output_router_logits": false, "use_cache": true, "max_position_embeddings": 131072,
    "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert":
      ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}})");
  c.update(json::parse(dimensions));
  return c;
}

// openai/gpt-oss-20b and openai/gpt-oss-120b (config.json); layer_types is set by the resize.
json gpt_oss_20b() {
  return gpt_oss_architecture(R"({
    "vocab_size": 201088, "hidden_size": 2880, "intermediate_size": 2880,
    "num_hidden_layers": 24, "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
    "num_local_experts": 32, "num_experts_per_tok": 4, "experts_per_token": 4})");
}
json gpt_oss_120b() {
  return gpt_oss_architecture(R"({
    "vocab_size": 201088, "hidden_size": 2880, "intermediate_size": 2880,
    "num_hidden_layers": 36, "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
    "num_local_experts": 128, "num_experts_per_tok": 4, "experts_per_token": 4})");
}

// Every feature at toy size: a hidden size and expert width of several MXFP4 groups (down_proj's
// input is 3 groups), q rows other than hidden, both attention kinds, 8 experts.
json gpt_oss_tiny() {
  return gpt_oss_architecture(R"({
    "vocab_size": 256, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24, "num_local_experts": 8,
    "num_experts_per_tok": 2, "experts_per_token": 2, "max_position_embeddings": 4096,
    "pad_token_id": 0, "eos_token_id": 1})");
}

// The smallest with those features, for hostile-input corpora.
json gpt_oss_micro() {
  return gpt_oss_architecture(R"({
    "vocab_size": 32, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "num_local_experts": 4,
    "num_experts_per_tok": 2, "experts_per_token": 2, "max_position_embeddings": 4096,
    "pad_token_id": 0, "eos_token_id": 1})");
}

// Alternating sliding and full attention from layer 0, as the releases have it.
void set_layer_types(json& c) {
  json types = json::array();
  for (int64_t l = 0; l < c["num_hidden_layers"].get<int64_t>(); ++l)
    types.push_back(l % 2 == 0 ? "sliding_attention" : "full_attention");
  c["layer_types"] = types;
}

}  // namespace

bool is_gpt_oss_model_type(std::string_view model_type) {
  return model_type == "gpt_oss";
}

ModelConfig parse_gpt_oss_config(const json& doc, const std::string& file) {
  // quantization_config names MXFP4 without a block size (the MX format fixes it at 32): the
  // common parser's FP8 block size is not looked for.
  json plain = doc;
  if (doc.is_object())
    if (auto q = doc.find("quantization_config"); q != doc.end() && !q->is_null()) {
      const auto m = q->is_object() ? q->find("quant_method") : q->end();
      if (m == q->end() || *m != "mxfp4")
        fail(ErrorKind::kMalformedFile, file, "", "gpt_oss quantization_config is " + q->dump(),
             "quant_method \"mxfp4\" (the published experts), or none");
      plain.erase("quantization_config");
    }
  ModelConfig c = parse_common_fields(plain, file, "intermediate_size");
  c.raw = doc;
  parse_hf_moe_attention(doc, file, c);
  parse_routed_experts(doc, file, c, "num_local_experts");
  FieldReader f(doc, file);
  f.boolean("attention_bias", true);
  if (c.hidden_size % 32 != 0 || c.moe_intermediate_size % 32 != 0)
    fail(ErrorKind::kMalformedFile, file, "",
         fmt::format("hidden_size = {} and intermediate_size = {} are not both multiples of 32",
                     c.hidden_size, c.moe_intermediate_size),
         "multiples of the MXFP4 group of 32 (the experts' inputs)");
  if (auto t = doc.find("layer_types"); t != doc.end() && !t->is_null()) {
    if (!t->is_array() || static_cast<int64_t>(t->size()) != c.num_hidden_layers)
      fail(ErrorKind::kMalformedFile, file, "", "config field \"layer_types\" is " + t->dump(),
           fmt::format("a list of {} (num_hidden_layers) layer types", c.num_hidden_layers));
    for (size_t l = 0; l < t->size(); ++l) {
      const auto& v = (*t)[l];
      if (v != "sliding_attention" && v != "full_attention")
        fail(ErrorKind::kMalformedFile, file, "", "config field \"layer_types\" holds " + v.dump(),
             "\"sliding_attention\" or \"full_attention\"");
      if (v == "sliding_attention") c.layer_attention[l] = AttentionKind::kSlidingWindow;
    }
  }
  c.layer_is_moe.assign(static_cast<size_t>(c.num_hidden_layers), true);
  return c;
}

std::unique_ptr<const ModelSpec> make_gpt_oss_spec(const ModelConfig& config) {
  const std::string file = "config.json";  // parse_gpt_oss_config checked the field
  const bool bias = FieldReader(config.raw, file).boolean("attention_bias", true);
  HfMoeLayout l;
  l.name = "gpt-oss";
  l.qkv_bias = l.o_bias = bias;
  l.router_correction_bias = true;  // a plain router bias, BF16
  l.router_bias_f32 = false;
  l.hf_router = "mlp.router.weight";
  l.hf_router_bias = "mlp.router.bias";
  l.native_router_bias = "mlp.gate.bias";
  l.stacked_mxfp4_experts = true;
  l.compat_mxfp4_ldexp = true;
  l.attention_sinks = true;
  l.compat_quantized_export_refusal =
      "Automodel 0.7.0's GPT-OSS to_hf(quantization=True) writes all-ones MXFP4 placeholders "
      "(90 groups whatever the shape), not the weights";
  return make_hf_moe_spec(config, l);
}

const std::vector<std::string>& gpt_oss_preset_names() {
  static const std::vector<std::string> names{"gpt-oss-tiny", "gpt-oss-micro", "gpt-oss-20b",
                                              "gpt-oss-120b"};
  return names;
}

std::optional<json> gpt_oss_preset(std::string_view name, const PresetSize& size) {
  std::optional<json> base;
  if (name == "gpt-oss-tiny") base = gpt_oss_tiny();
  if (name == "gpt-oss-micro") base = gpt_oss_micro();
  if (name == "gpt-oss-20b") base = gpt_oss_20b();
  if (name == "gpt-oss-120b") base = gpt_oss_120b();
  if (!base) return std::nullopt;
  json c = resize_hf_moe_preset(*base, size, "num_local_experts");
  set_layer_types(c);
  return c;
}

}  // namespace moeckpt
