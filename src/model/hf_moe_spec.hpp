#pragma once
// The spec of a checkpoint family that follows the shared Hugging Face MoE conventions, stated as
// data: grouped-query attention (self_attn.{q,k,v,o}_proj, optional biases and q/k RMSNorms), dense
// layers of intermediate_size (mlp.{gate,up,down}_proj), MoE layers (router mlp.gate, optional F32
// e_score_correction_bias, optional shared experts, routed experts mlp.experts.E.*_proj), MTP
// layers stored as decoder layers after the last one, 128x128 block FP8 in the FP8 releases. A
// family (src/model/<family>/) parses its config into a ModelConfig and says which of these its
// checkpoints have (HfMoeLayout); everything else is here once.
#include <memory>
#include <string_view>

#include <nlohmann/json.hpp>

#include "moeckpt/model_spec.hpp"

namespace moeckpt {

// The q/k RMSNorm after the projection: none, per head ([head_dim], shared by the heads) or over
// the whole projection ([heads * head_dim]).
enum class QkNorm { kNone, kPerHead, kFullWidth };

struct HfMoeLayout {
  std::string_view name;  // layout_name(), for messages and inspect
  bool qkv_bias = false;  // self_attn.{q,k,v}_proj.bias
  bool o_bias = false;    // self_attn.o_proj.bias
  QkNorm qk_norm = QkNorm::kNone;
  bool router_correction_bias = false;  // mlp.gate.e_score_correction_bias (F32 as published)
  // Automodel's adapter: whether its to_hf(quantization=True) casts (the MoE mixin adapters
  // ignore the flag), and why its from_hf cannot take FP8 (empty: it can).
  bool compat_casts = false;
  std::string_view compat_fp8_refusal;
};

std::unique_ptr<const ModelSpec> make_hf_moe_spec(const ModelConfig& config,
                                                  const HfMoeLayout& layout);

// Config fields every such family reads alike, into `c`: grouped-query attention dims from
// num_attention_heads, num_key_value_heads and head_dim (absent: hidden_size / heads, as
// transformers' getattr fallback), every layer full attention.
void parse_hf_moe_attention(const nlohmann::json& doc, const std::string& file, ModelConfig& c);

// The quantization_config of a 128x128 block-FP8 release (quant_method "fp8", dynamic activations).
nlohmann::json block_fp8_quantization_config();

// A synth preset's config resized by --layers/--experts/--vocab: `first_dense_field`, when given,
// is kept below the layer count; the expert count is `experts_field`.
nlohmann::json resize_hf_moe_preset(nlohmann::json c, const PresetSize& size,
                                    const char* experts_field,
                                    const char* first_dense_field = nullptr);

}  // namespace moeckpt
