#pragma once
// The spec of a checkpoint family that follows the shared Hugging Face MoE conventions, stated as
// data: grouped-query attention (self_attn.{q,k,v,o}_proj, optional biases and q/k RMSNorms), dense
// layers of intermediate_size (mlp.{gate,up,down}_proj), MoE layers (router mlp.gate, optional F32
// e_score_correction_bias, optional shared experts, routed experts mlp.experts.E.*_proj), MTP
// layers stored as decoder layers after the last one, 128x128 block FP8 in the FP8 releases. A
// family (src/model/<family>/) parses its config into a ModelConfig and says which of these its
// checkpoints have (HfMoeLayout); everything else is here once.
#include <array>
#include <memory>
#include <span>
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
  bool router_f32 = false;              // the router weight is published F32
  // The MoE block's HF names, relative to "layers.<L>.", where they differ from the native ones
  // (mlp.gate.weight, mlp.gate.e_score_correction_bias, mlp.experts.E.<gate|up|down>_proj.weight).
  std::string_view hf_router = "mlp.gate.weight";
  std::string_view hf_router_bias = "mlp.gate.e_score_correction_bias";
  std::string_view native_router_bias = "mlp.gate.e_score_correction_bias";
  bool router_bias_f32 = true;  // the router's bias is published F32 (else BF16)
  std::string_view hf_experts = "mlp.experts";
  std::array<std::string_view, 3> hf_expert_leaves = {"gate_proj", "up_proj", "down_proj"};
  // Automodel's adapter: why its from_hf cannot take FP8 (empty: it dequantizes), and what its
  // to_hf(quantization=True) casts: every ".weight" but LoRA ones and those whose HF name holds one
  // of these (empty: nothing; the MoE mixin adapters ignore the flag).
  std::string_view compat_fp8_refusal;
  std::span<const std::string_view> compat_cast_excluded;
  // Stacked MXFP4 experts: a layer's routed experts in one tensor per projection, gate and up
  // fused with their rows interleaved (kept so natively: gate_and_up_projs is that [2I, hidden]
  // transposed), as published mlp.experts.<gate_up|down>_proj_blocks [E, out, in / 32, 16] (U8,
  // two E2M1 codes per byte, the even input in the low nibble) with _scales [E, out, in / 32]
  // (U8 E8M0) and _bias [E, out]. A member (one expert) is named "<stacked>[E]".
  bool stacked_mxfp4_experts = false;
  bool compat_mxfp4_ldexp = false;  // Automodel decodes them with torch.ldexp (E8M0 255: 2^128)
  // self_attn.sinks [heads] (one learned logit per head), natively under TE
  // self_attn.attn_module.softmax_offset.
  bool attention_sinks = false;
  // Why Automodel's to_hf(quantization=True) is refused in compat mode (empty: it is not).
  std::string_view compat_quantized_export_refusal;
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
