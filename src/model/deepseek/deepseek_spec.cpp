// The DeepSeek-V3 checkpoint family: DeepSeek-V3, V3.1 and R1 (model_type "deepseek_v3") and
// Moonshot's Kimi-K2 ("kimi_k2", the same architecture and checkpoint format).
//
// What the published checkpoints hold (their safetensors headers; DeepSeek-V3's inference/model.py
// creates only its Linear weights as FP8):
// - FP8 E4M3 with an F32 `weight_scale_inv` of [ceil(out/128), ceil(in/128)] (ragged last blocks
//   use their own scale): every attention projection (q_a_proj, q_b_proj or q_proj,
//   kv_a_proj_with_mqa, kv_b_proj, o_proj), the dense MLPs, the routed and the shared experts;
// - BF16: embeddings, lm_head, every RMSNorm, the router (mlp.gate.weight), and the MTP layer's
//   eh_proj, embed_tokens and shared_head; F32: mlp.gate.e_score_correction_bias.
// The MTP layers are stored as decoder layers num_hidden_layers .. + num_nextn_predict_layers - 1,
// each a MoE layer plus embed_tokens, enorm, hnorm, eh_proj and shared_head.{norm,head}.
//
// NeMo Automodel 0.7.0 (DeepSeekV3StateDictAdapter, shared by Kimi-K2) groups routed experts as the
// MiMo adapter does (gate_and_up_projs [E, hidden, 2 * moe_intermediate], gate first; down_projs
// [E, moe_intermediate, hidden]) and keeps every other name; its to_hf(quantization=True) casts
// every ".weight" except norms, embeddings, lm_head and the router, with scales of ones.
#include "model/deepseek/deepseek_spec.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include "model/config_fields.hpp"
#include "model/hf_tensor_names.hpp"
#include "model/preset_size.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {
namespace {

std::optional<Projection> mlp_projection(std::string_view s) {
  if (s == "gate_proj") return Projection::kGate;
  if (s == "up_proj") return Projection::kUp;
  if (s == "down_proj") return Projection::kDown;
  return std::nullopt;
}

std::optional<Projection> attention_projection(std::string_view s) {
  static constexpr std::array kAll = {Projection::kQ,   Projection::kQA,  Projection::kQB,
                                      Projection::kKvA, Projection::kKvB, Projection::kO};
  for (Projection p : kAll)
    if (s == projection_name(p)) return p;
  return std::nullopt;
}

// The tensors only an MTP layer holds, relative to "layers.<L>.".
constexpr std::array<std::string_view, 6> kMtpOnly = {
    "embed_tokens.weight",     "enorm.weight",           "hnorm.weight", "eh_proj.weight",
    "shared_head.norm.weight", "shared_head.head.weight"};

bool is_mtp_only(std::string_view rest) {
  return std::find(kMtpOnly.begin(), kMtpOnly.end(), rest) != kMtpOnly.end();
}

// What follows "layers.<L>." (`k.mtp` already set). An MTP layer's own tensors are named so at
// any index: contradicts_config refuses them in a decoder layer (a config.json whose
// num_hidden_layers counts the MTP layer would take it for a decoder layer).
void classify_deepseek_layer_rest(std::string_view rest, TensorKey& k) {
  if (rest == "input_layernorm.weight" || rest == "post_attention_layernorm.weight") {
    k.kind = TensorKind::kNorm;
    return;
  }
  if (rest == "enorm.weight" || rest == "hnorm.weight" || rest == "shared_head.norm.weight") {
    k.kind = TensorKind::kNorm;
    return;
  }
  if (rest == "eh_proj.weight") {
    k.kind = TensorKind::kMtpEhProj;
    return;
  }
  if (rest == "embed_tokens.weight") {
    k.kind = TensorKind::kMtpEmbedding;
    return;
  }
  if (rest == "shared_head.head.weight") {
    k.kind = TensorKind::kMtpHead;
    return;
  }
  if (rest.starts_with("self_attn.")) {
    const auto r = rest.substr(10);
    if (r == "q_a_layernorm.weight" || r == "kv_a_layernorm.weight") {
      k.kind = TensorKind::kNorm;
      return;
    }
    if (!r.ends_with(".weight")) return;
    if (auto p = attention_projection(r.substr(0, r.size() - 7))) {
      k.kind = TensorKind::kAttentionProj;
      k.projection = *p;
    }
    return;
  }
  if (!rest.starts_with("mlp.")) return;
  auto r = rest.substr(4);
  if (r == "gate.weight") {
    k.kind = TensorKind::kRouter;
    return;
  }
  if (r == "gate.e_score_correction_bias") {
    k.kind = TensorKind::kRouterBias;
    return;
  }
  const bool shared = r.starts_with("shared_experts.");
  if (shared) r.remove_prefix(15);
  if (r.starts_with("experts.") && !shared) {
    auto e = r.substr(8);
    if (e == "gate_and_up_projs" || e == "down_projs") {
      k.kind = TensorKind::kGroupedExperts;
      k.projection = e == "down_projs" ? Projection::kDown : Projection::kGateAndUp;
      return;
    }
    auto id = take_index(e);
    if (!id || !e.ends_with(".weight")) return;
    if (auto p = mlp_projection(e.substr(0, e.size() - 7))) {
      k.kind = TensorKind::kExpertProj;
      k.projection = *p;
      k.expert = *id;
    }
    return;
  }
  if (!r.ends_with(".weight")) return;
  if (auto p = mlp_projection(r.substr(0, r.size() - 7))) {
    k.kind = shared ? TensorKind::kSharedExpertProj : TensorKind::kDenseMlpProj;
    k.projection = *p;
  }
}

class DeepSeekSpec final : public ModelSpec {
 public:
  explicit DeepSeekSpec(const ModelConfig& c) : ModelSpec(c) {
    if (c.latent) latent_ = *c.latent;
  }

  std::string_view layout_name() const noexcept override {
    const auto t = config_.raw.is_object() ? config_.raw.find("model_type") : config_.raw.end();
    return t != config_.raw.end() && *t == "kimi_k2" ? "Kimi-K2" : "DeepSeek-V3";
  }

  TensorKey classify(std::string_view name) const override {
    TensorKey k;
    k.name = std::string(name);
    std::string_view w = name;
    if (w.ends_with(kBlockScaleSuffix)) {
      k.is_scale = true;
      w.remove_suffix(kBlockScaleSuffix.size());
    }
    k.weight_name = std::string(w);
    if (auto path = split_layer_path(w)) {
      k.prefix = std::string(path->prefix);
      k.layer = path->layer;
      k.mtp = path->layer >= config_.num_hidden_layers &&
              path->layer < config_.num_hidden_layers + config_.num_nextn_predict_layers;
      classify_deepseek_layer_rest(path->rest, k);
      return k;
    }
    classify_model_level(w, k);
    return k;
  }

  // No MXFP4 experts in this format; the name is never looked up.
  std::string mx_scale_name(std::string_view weight) const override {
    return std::string(weight) + "_scale";
  }

  std::optional<BackendName> native_backend_name(std::string_view, AttnBackend) const override {
    return std::nullopt;
  }
  std::optional<std::string> hf_name_of_backend_name(std::string_view) const override {
    return std::nullopt;
  }

  std::vector<RequiredTensor> required_tensors(std::string_view prefix,
                                               const std::set<int64_t>& mtp_layers,
                                               bool native) const override {
    std::vector<RequiredTensor> out;
    for (int64_t l = 0; l < config_.num_hidden_layers; ++l)
      for (const auto& n : layer_tensors(l, native))
        out.push_back({fmt::format("{}layers.{}.{}", prefix, l, n), describe_layer(l), {}});
    for (int64_t m : mtp_layers)
      for (const auto& n : layer_tensors(m, native))
        out.push_back({fmt::format("{}layers.{}.{}", prefix, m, n), describe_layer(m), {}});
    out.push_back({std::string(prefix) + "embed_tokens.weight", "the model", {}});
    out.push_back({std::string(prefix) + "norm.weight", "the model", {}});
    if (!config_.tie_word_embeddings)
      out.push_back({"lm_head.weight", "the model (tie_word_embeddings is false)", {}});
    return out;
  }

  // Kimi-K2 stores each layer's rotary inverse frequencies; they are carried along unchanged.
  bool is_passthrough(std::string_view name) const override {
    return name.ends_with(".rotary_emb.inv_freq");
  }
  std::vector<std::pair<std::string, std::vector<uint64_t>>> synthetic_passthrough_tensors()
      const override {
    return {};
  }

  std::optional<std::string> contradicts_config(const TensorKey& k) const override {
    if (k.is_scale || !k.layer) return std::nullopt;
    if (!k.mtp) {
      const auto path = split_layer_path(k.weight_name);
      if (path && is_mtp_only(path->rest))
        return fmt::format(
            "{} is an MTP layer's tensor, but config.json makes layer {} a decoder layer ({})",
            path->rest, *k.layer, layer_counts());
    }
    const bool q_lora = latent_.q_lora_rank > 0;
    const bool q_lora_tensor =
        (k.kind == TensorKind::kAttentionProj &&
         (k.projection == Projection::kQA || k.projection == Projection::kQB)) ||
        (k.kind == TensorKind::kNorm && k.weight_name.ends_with("self_attn.q_a_layernorm.weight"));
    if (q_lora_tensor && !q_lora)
      return std::string("q_lora_rank is null in config.json: the layer has one q_proj");
    if (k.kind == TensorKind::kAttentionProj && k.projection == Projection::kQ && q_lora)
      return fmt::format("q_lora_rank is {} in config.json: the layer has q_a_proj and q_b_proj",
                         latent_.q_lora_rank);
    const bool moe = is_moe_layer(*k.layer);
    if (k.kind == TensorKind::kDenseMlpProj && moe)
      return fmt::format("{} is a MoE layer in config.json", describe_layer(*k.layer));
    if ((k.kind == TensorKind::kRouter || k.kind == TensorKind::kRouterBias) && !moe)
      return fmt::format("{} is a dense layer in config.json", describe_layer(*k.layer));
    if (k.kind == TensorKind::kSharedExpertProj && (!moe || config_.n_shared_experts == 0))
      return fmt::format("{} has no shared experts in config.json (n_shared_experts {})",
                         describe_layer(*k.layer), config_.n_shared_experts);
    return std::nullopt;
  }

  int64_t mtp_layer_id(int64_t i) const override { return config_.num_hidden_layers + i; }
  std::optional<int64_t> configured_mtp_layers() const override {
    return config_.num_nextn_predict_layers;
  }
  bool mtp_layers_have_routed_experts() const override { return true; }

  std::string describe_layer(int64_t l) const override {
    if (is_mtp_layer(l)) return fmt::format("MTP layer {}", l);
    return fmt::format("layer {} ({})", l, is_moe_layer(l) ? "MoE" : "dense");
  }

  std::optional<std::vector<uint64_t>> expected_hf_shape(const TensorKey& k) const override {
    using Shape = std::vector<uint64_t>;
    auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
    const auto& c = config_;
    const uint64_t D = u(c.hidden_size), V = u(c.vocab_size);
    if (k.layer && !k.mtp && *k.layer >= c.num_hidden_layers) return std::nullopt;
    const auto& a = latent_;
    const uint64_t H = u(c.full.num_heads), qk = u(a.qk_nope_head_dim + a.qk_rope_head_dim);
    const uint64_t shared = u(c.n_shared_experts * c.moe_intermediate_size);
    switch (k.kind) {
      case TensorKind::kEmbedding:
      case TensorKind::kLmHead:
      case TensorKind::kMtpEmbedding:
      case TensorKind::kMtpHead:
        return Shape{V, D};
      case TensorKind::kFinalNorm:
        return Shape{D};
      case TensorKind::kNorm:
        if (k.weight_name.ends_with("self_attn.q_a_layernorm.weight"))
          return a.q_lora_rank ? std::optional(Shape{u(a.q_lora_rank)}) : std::nullopt;
        if (k.weight_name.ends_with("self_attn.kv_a_layernorm.weight"))
          return Shape{u(a.kv_lora_rank)};
        return Shape{D};
      case TensorKind::kAttentionProj:
        switch (k.projection) {
          case Projection::kQ:
            return Shape{H * qk, D};
          case Projection::kQA:
            return a.q_lora_rank ? std::optional(Shape{u(a.q_lora_rank), D}) : std::nullopt;
          case Projection::kQB:
            return a.q_lora_rank ? std::optional(Shape{H * qk, u(a.q_lora_rank)}) : std::nullopt;
          case Projection::kKvA:
            return Shape{u(a.kv_lora_rank + a.qk_rope_head_dim), D};
          case Projection::kKvB:
            return Shape{H * u(a.qk_nope_head_dim + a.v_head_dim), u(a.kv_lora_rank)};
          case Projection::kO:
            return Shape{D, H * u(a.v_head_dim)};
          default:
            return std::nullopt;
        }
      case TensorKind::kDenseMlpProj:
        if (k.projection == Projection::kDown) return Shape{D, u(c.intermediate_size)};
        return Shape{u(c.intermediate_size), D};
      case TensorKind::kSharedExpertProj:
        if (k.projection == Projection::kDown) return Shape{D, shared};
        return Shape{shared, D};
      case TensorKind::kRouter:
        return Shape{u(c.n_routed_experts), D};
      case TensorKind::kRouterBias:
        return Shape{u(c.n_routed_experts)};
      case TensorKind::kExpertProj:
        return expert_hf_shape(k.projection);
      case TensorKind::kMtpEhProj:
        return Shape{D, 2 * D};
      default:
        return std::nullopt;
    }
  }
  const AttentionDims& attention_dims(const TensorKey&) const override { return config_.full; }

  bool is_published_fp8(std::string_view name) const override {
    const auto k = classify(name);
    if (k.is_scale) return false;
    return k.kind == TensorKind::kAttentionProj || k.kind == TensorKind::kDenseMlpProj ||
           k.kind == TensorKind::kSharedExpertProj || k.kind == TensorKind::kExpertProj;
  }
  bool is_published_f32(const TensorKey& key) const override {
    return key.kind == TensorKind::kRouterBias;
  }
  // The goldens are Automodel 0.7.0's (0.6.0's behaviour for this family is not reproduced).
  bool reproduces(Compat version) const override { return version != Compat::kAutomodel06; }
  // Automodel's should_quantize_key (deepseek_v3/state_dict_adapter.py): a substring test, so
  // "norm.weight" also excludes q_a_layernorm, kv_a_layernorm, enorm, hnorm and shared_head.norm.
  bool compat_quantizes(std::string_view key, Compat) const override {
    if (!key.ends_with(".weight")) return false;
    static constexpr std::array<std::string_view, 6> kExcluded = {"input_layernorm.weight",
                                                                  "post_attention_layernorm.weight",
                                                                  "norm.weight",
                                                                  "lm_head.weight",
                                                                  "embed_tokens.weight",
                                                                  "mlp.gate.weight"};
    for (auto s : kExcluded)
      if (key.find(s) != std::string_view::npos) return false;
    return true;
  }
  int64_t compat_cast_scale_rows(const TensorKey&, int64_t rows,
                                 int64_t block_rows) const override {
    return (rows + block_rows - 1) / block_rows;
  }

  bool hf_qkv_fused() const noexcept override { return false; }
  bool native_qkv_fused() const noexcept override { return false; }
  bool hf_experts_mxfp4() const noexcept override { return false; }
  std::optional<int64_t> fixed_checkpoint_tp() const override { return std::nullopt; }
  TpInterleavedQkv qkv_interleave(const AttentionDims&, int64_t, bool, const std::string& file,
                                  const std::string& tensor) const override {
    fail(ErrorKind::kUnsupportedLayout, file, tensor,
         "a fused qkv projection in a latent-attention checkpoint",
         "q_a_proj/q_b_proj (or q_proj), kv_a_proj_with_mqa and kv_b_proj");
  }
  std::optional<FusedQkvLayout> detect_shared_qkv_scales(
      const TensorKey&, int64_t, int64_t, const std::array<int64_t, 3>&) const override {
    return std::nullopt;
  }
  std::optional<FusedQkvLayout> shared_qkv_scales_to_write(const TensorKey&,
                                                           int64_t) const override {
    return std::nullopt;
  }
  std::optional<std::string> compat_quantized_export_refusal() const override {
    return std::nullopt;
  }
  void rewrite_export_config(nlohmann::json&, bool) const override {}

 private:
  bool is_mtp_layer(int64_t l) const {
    return l >= config_.num_hidden_layers &&
           l < config_.num_hidden_layers + config_.num_nextn_predict_layers;
  }
  bool is_moe_layer(int64_t l) const {
    return is_mtp_layer(l) || (l >= 0 && l < config_.num_hidden_layers &&
                               config_.layer_is_moe[static_cast<size_t>(l)]);
  }

  // A decoder (or MTP) layer's tensors besides routed experts, relative to "layers.<l>.";
  // natively, its grouped experts.
  std::vector<std::string> layer_tensors(int64_t l, bool native) const {
    std::vector<std::string> out{"input_layernorm.weight", "post_attention_layernorm.weight"};
    if (latent_.q_lora_rank)
      for (const char* n : {"q_a_proj.weight", "q_a_layernorm.weight", "q_b_proj.weight"})
        out.push_back(std::string("self_attn.") + n);
    else
      out.push_back("self_attn.q_proj.weight");
    for (const char* n : {"kv_a_proj_with_mqa.weight", "kv_a_layernorm.weight", "kv_b_proj.weight",
                          "o_proj.weight"})
      out.push_back(std::string("self_attn.") + n);
    if (is_moe_layer(l)) {
      out.push_back("mlp.gate.weight");
      out.push_back("mlp.gate.e_score_correction_bias");
      if (config_.n_shared_experts > 0)
        for (const char* p : {"gate_proj", "up_proj", "down_proj"})
          out.push_back(std::string("mlp.shared_experts.") + p + ".weight");
      if (native) {
        out.push_back("mlp.experts.gate_and_up_projs");
        out.push_back("mlp.experts.down_projs");
      }
    } else {
      for (const char* p : {"gate_proj", "up_proj", "down_proj"})
        out.push_back(std::string("mlp.") + p + ".weight");
    }
    if (is_mtp_layer(l))
      for (auto n : kMtpOnly) out.emplace_back(n);
    return out;
  }

  // "num_hidden_layers = 4, num_nextn_predict_layers = 1: MTP layer 4", for messages.
  std::string layer_counts() const {
    const int64_t n = config_.num_hidden_layers, m = config_.num_nextn_predict_layers;
    if (m == 0)
      return fmt::format("num_hidden_layers = {}, num_nextn_predict_layers = 0: no MTP layer", n);
    if (m == 1)
      return fmt::format("num_hidden_layers = {}, num_nextn_predict_layers = 1: MTP layer {}", n,
                         n);
    return fmt::format("num_hidden_layers = {}, num_nextn_predict_layers = {}: MTP layers {}..{}",
                       n, m, n, n + m - 1);
  }

  LatentAttention latent_;
};

using json = nlohmann::json;

json architecture(const char* model_type, const char* dimensions) {
  json c = json::parse(R"({
    "architectures": ["DeepseekV3ForCausalLM"], "hidden_act": "silu", "attention_bias": false,
    "attention_dropout": 0.0, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
    "moe_layer_freq": 1, "norm_topk_prob": true, "scoring_func": "sigmoid",
    "topk_method": "noaux_tc", "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "use_cache": true, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1})");
  c["model_type"] = model_type;
  c.update(json::parse(dimensions));
  return c;
}

// DeepSeek-V3 / R1 (config.json of deepseek-ai/DeepSeek-V3).
json deepseek_v3_full() {
  return architecture("deepseek_v3", R"({
    "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_nextn_predict_layers": 1,
    "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1,
    "n_routed_experts": 256, "routed_scaling_factor": 2.5, "kv_lora_rank": 512,
    "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
    "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8, "first_k_dense_replace": 3,
    "max_position_embeddings": 163840, "rope_theta": 10000})");
}

// Moonshot's Kimi-K2-Instruct.
json kimi_k2_full() {
  json c = architecture("kimi_k2", R"({
    "vocab_size": 163840, "hidden_size": 7168, "intermediate_size": 18432,
    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_nextn_predict_layers": 0,
    "num_attention_heads": 64, "num_key_value_heads": 64, "n_shared_experts": 1,
    "n_routed_experts": 384, "routed_scaling_factor": 2.827, "kv_lora_rank": 512,
    "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
    "n_group": 1, "topk_group": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 1,
    "max_position_embeddings": 131072, "rope_theta": 50000})");
  return c;
}

// Every feature at toy size: dimensions that are not multiples of 128 (ragged last blocks in
// rows and columns), a dense layer and two MoE layers, one shared expert, an MTP layer.
json deepseek_v3_tiny(bool q_lora) {
  json c = architecture("deepseek_v3", R"({
    "vocab_size": 512, "hidden_size": 320, "intermediate_size": 448,
    "moe_intermediate_size": 96, "num_hidden_layers": 3, "num_nextn_predict_layers": 1,
    "num_attention_heads": 4, "num_key_value_heads": 4, "n_shared_experts": 1,
    "n_routed_experts": 8, "routed_scaling_factor": 2.5, "kv_lora_rank": 160,
    "q_lora_rank": 192, "qk_rope_head_dim": 32, "v_head_dim": 48, "qk_nope_head_dim": 64,
    "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
    "max_position_embeddings": 4096, "rope_theta": 10000})");
  if (!q_lora) c["q_lora_rank"] = nullptr;
  return c;
}

// The smallest checkpoint with every feature, for hostile-input corpora (~60 KB): dimensions over
// 128 with ragged blocks, one dense and one MoE layer, a shared expert, an MTP layer.
json deepseek_v3_micro() {
  return architecture("deepseek_v3", R"({
    "vocab_size": 32, "hidden_size": 136, "intermediate_size": 40,
    "moe_intermediate_size": 24, "num_hidden_layers": 2, "num_nextn_predict_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 2, "n_shared_experts": 1,
    "n_routed_experts": 4, "routed_scaling_factor": 2.5, "kv_lora_rank": 24,
    "q_lora_rank": 40, "qk_rope_head_dim": 8, "v_head_dim": 16, "qk_nope_head_dim": 16,
    "n_group": 1, "topk_group": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
    "max_position_embeddings": 4096, "rope_theta": 10000})");
}

std::optional<json> deepseek_base_preset(std::string_view name) {
  if (name == "deepseek-v3-tiny") return deepseek_v3_tiny(true);
  if (name == "deepseek-v3-micro") return deepseek_v3_micro();
  if (name == "deepseek-v3-tiny-q-proj") return deepseek_v3_tiny(false);
  if (name == "deepseek-v3-full") return deepseek_v3_full();
  if (name == "kimi-k2-full") return kimi_k2_full();
  return std::nullopt;
}

}  // namespace

bool is_deepseek_model_type(std::string_view model_type) {
  return model_type == "deepseek_v3" || model_type == "kimi_k2";
}

ModelConfig parse_deepseek_config(const json& doc, const std::string& file) {
  ModelConfig c = parse_common_fields(doc, file);
  FieldReader f(doc, file);
  parse_routed_experts(doc, file, c);
  // Layer l is MoE when l >= first_k_dense_replace and l % moe_layer_freq == 0 (transformers'
  // DeepseekV3 rule; the published configs use a frequency of 1). A field the document lacks
  // takes transformers' DeepseekV3Config default (null is explicit).
  const int64_t first_moe = f.count("first_k_dense_replace", 3, c.num_hidden_layers);
  const int64_t every = f.count("moe_layer_freq", 1, c.num_hidden_layers);
  if (every == 0)
    fail(ErrorKind::kMalformedFile, file, "", "config field \"moe_layer_freq\" is 0",
         "a positive integer");
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    c.layer_attention.push_back(AttentionKind::kFull);
    c.layer_is_moe.push_back(l >= first_moe && l % every == 0);
  }
  LatentAttention a;
  const bool q_null = doc.contains("q_lora_rank") && doc["q_lora_rank"].is_null();
  a.q_lora_rank = q_null ? 0 : f.count("q_lora_rank", 1536);
  if (!q_null && a.q_lora_rank == 0)
    fail(ErrorKind::kMalformedFile, file, "", "config field \"q_lora_rank\" is 0",
         "a positive integer, or null for a plain q_proj");
  a.kv_lora_rank = f.positive("kv_lora_rank");
  a.qk_nope_head_dim = f.positive("qk_nope_head_dim");
  a.qk_rope_head_dim = f.positive("qk_rope_head_dim");
  a.v_head_dim = f.positive("v_head_dim");
  c.latent = a;
  const int64_t heads = f.positive("num_attention_heads");
  // Every head has its own keys and values once kv_b_proj expands the latent.
  c.full = {heads, heads, a.qk_nope_head_dim + a.qk_rope_head_dim, a.v_head_dim, false};
  c.swa = c.full;
  const bool shared_null = doc.contains("n_shared_experts") && doc["n_shared_experts"].is_null();
  c.n_shared_experts = shared_null ? 0 : f.count("n_shared_experts", 1, 1 << 10);
  c.num_nextn_predict_layers = f.count("num_nextn_predict_layers", 0, 64);
  return c;
}

std::unique_ptr<const ModelSpec> make_deepseek_spec(const ModelConfig& config) {
  return std::make_unique<DeepSeekSpec>(config);
}

const std::vector<std::string>& deepseek_preset_names() {
  static const std::vector<std::string> names{"deepseek-v3-tiny", "deepseek-v3-tiny-q-proj",
                                              "deepseek-v3-micro", "deepseek-v3-full",
                                              "kimi-k2-full"};
  return names;
}

std::optional<json> deepseek_preset(std::string_view name, const PresetSize& o) {
  auto base = deepseek_base_preset(name);
  if (!base) return std::nullopt;
  json c = *base;
  if (o.layers) {
    check_preset_option("layers", *o.layers, 1, c["num_hidden_layers"].get<int64_t>());
    c["num_hidden_layers"] = *o.layers;
    c["first_k_dense_replace"] =
        std::min<int64_t>(c["first_k_dense_replace"].get<int64_t>(), *o.layers - 1);
  }
  resize_experts_and_vocab(c, o);
  if (o.experts) {
    c["n_group"] = 1;  // groups must divide the experts; routing is not what a checkpoint tests
    c["topk_group"] = 1;
  }
  c["quantization_config"] = {{"activation_scheme", "dynamic"},
                              {"fmt", "e4m3"},
                              {"quant_method", "fp8"},
                              {"weight_block_size", {128, 128}}};
  return c;
}

}  // namespace moeckpt
