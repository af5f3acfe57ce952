#pragma once
// A checkpoint's config.json as a typed config. Every number a converter needs comes from here,
// never from tensor shapes. Which family's rules parse it (and describe its tensors, ModelSpec) is
// chosen by its model_type.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moeckpt {

enum class AttentionKind { kFull, kSlidingWindow };

struct AttentionDims {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;    // Q and K
  int64_t v_head_dim = 0;  // V
  bool has_sink = false;   // attention_sink_bias [num_heads]

  int64_t q_rows() const noexcept { return num_heads * head_dim; }
  int64_t k_rows() const noexcept { return num_kv_heads * head_dim; }
  int64_t v_rows() const noexcept { return num_kv_heads * v_head_dim; }
  int64_t o_cols() const noexcept { return num_heads * v_head_dim; }
};

// The largest block side a config may give (the published checkpoint uses 128).
inline constexpr int64_t kMaxBlockSize = 65536;
// The largest config.json read: published configs are a few KB; parsing JSON costs about 15x the
// file in memory, so a larger one would break the memory bound before anything could check it.
inline constexpr uint64_t kMaxConfigBytes = 1ull << 20;

struct BlockSize {
  int64_t rows = 128;
  int64_t cols = 128;
};

// Multi-head latent attention: q through a rank-q_lora_rank bottleneck (0: one q_proj), k/v
// through a shared rank-kv_lora_rank latent plus a rope key shared by all heads.
struct LatentAttention {
  int64_t q_lora_rank = 0;
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
};

struct ModelConfig {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t moe_intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t vocab_size = 0;
  int64_t n_routed_experts = 0;
  int64_t num_experts_per_tok = 0;
  bool tie_word_embeddings = false;
  std::vector<AttentionKind> layer_attention;  // from hybrid_layer_pattern (0 full, 1 SWA)
  std::vector<bool> layer_is_moe;              // from moe_layer_freq
  AttentionDims full;
  AttentionDims swa;
  std::optional<BlockSize> block;         // quantization_config.weight_block_size, if quantized
  std::optional<LatentAttention> latent;  // set: the layers use latent attention
  int64_t n_shared_experts = 0;           // per MoE layer, one fused MLP of n x moe_intermediate
  int64_t num_nextn_predict_layers = 0;   // MTP layers stored after the decoder layers
  // The HF checkpoint holds one self_attn.qkv_proj per layer, interleaved over the checkpoint TP
  // degree, and (unless fused_native) MXFP4 routed experts; natively q/k/v are split.
  bool fused_qkv = false;
  // The fused qkv_proj stays fused natively, in canonical [Q, K, V] order, and the checkpoint TP
  // degree is num_key_value_heads.
  bool fused_native = false;
  std::string family;  // the registered family that parsed it (model_spec_for)
  nlohmann::json raw;  // the whole document, for copying/rewriting

  const AttentionDims& attention(AttentionKind kind) const noexcept {
    return kind == AttentionKind::kFull ? full : swa;
  }
  const AttentionDims& layer_attention_dims(int64_t layer) const {
    return attention(layer_attention.at(static_cast<size_t>(layer)));
  }
  int64_t moe_layer_count() const noexcept;

  // Parses and checks a config document with its family's rules (by model_type); errors name
  // `file`.
  static ModelConfig parse(const nlohmann::json& doc, const std::string& file);
  // Whether parse() takes this document's model_type (a config without one is the reference
  // family's): a tool that works on any model checks a known family's shapes only.
  static bool names_known_family(const nlohmann::json& doc);
  static ModelConfig load(const std::filesystem::path& path);
};

}  // namespace moeckpt
