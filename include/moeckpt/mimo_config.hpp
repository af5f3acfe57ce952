#pragma once
// MiMo-V2-Flash config.json as a typed config. Every number a converter needs comes from here,
// never from tensor shapes.
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

struct BlockSize {
  int64_t rows = 128;
  int64_t cols = 128;
};

struct MimoConfig {
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
  std::optional<BlockSize> block;  // quantization_config.weight_block_size, if quantized
  // attention_projection_layout "fused_qkv" (MiMo-V2.6, model_type "mimo_v2"): the HF checkpoint
  // holds one self_attn.qkv_proj per layer, interleaved over the checkpoint TP degree (the index's
  // metadata.tp_size), and MXFP4 routed experts; natively q/k/v are split as for V2-Flash.
  bool fused_qkv = false;
  // MiMo-V2.5-Pro (architectures MiMoV25ForCausalLM, fused_qkv): the same HF interleave, over
  // checkpoint TP = num_key_value_heads; natively qkv_proj stays fused in canonical [Q, K, V]
  // order.
  bool fused_native = false;
  nlohmann::json raw;  // the whole document, for copying/rewriting

  const AttentionDims& attention(AttentionKind kind) const noexcept {
    return kind == AttentionKind::kFull ? full : swa;
  }
  const AttentionDims& layer_attention_dims(int64_t layer) const {
    return attention(layer_attention.at(static_cast<size_t>(layer)));
  }
  int64_t moe_layer_count() const noexcept;

  // Parses and checks a config document; errors name `file`.
  static MimoConfig parse(const nlohmann::json& doc, const std::string& file);
  static MimoConfig load(const std::filesystem::path& path);
};

}  // namespace moeckpt
