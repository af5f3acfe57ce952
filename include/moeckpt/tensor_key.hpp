#pragma once
// Classifies a MiMo-V2-Flash tensor name: what it is, which layer/expert/projection, its prefix,
// and whether it is a `_scale_inv` companion.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace moeckpt {

enum class TensorKind {
  kEmbedding,       // {P}embed_tokens.weight
  kLmHead,          // lm_head.weight
  kFinalNorm,       // {P}norm.weight
  kNorm,            // a layer's *layernorm / MTP enorm, hnorm
  kAttentionProj,   // self_attn.{q,k,v,o}_proj.weight
  kAttentionSink,   // self_attn.attention_sink_bias
  kDenseMlpProj,    // mlp.{gate,up,down}_proj.weight (dense layers, MTP)
  kRouter,          // mlp.gate.weight
  kRouterBias,      // mlp.gate.e_score_correction_bias
  kExpertProj,      // mlp.experts.E.{gate,up,down}_proj.weight (HF layout)
  kGroupedExperts,  // mlp.experts.{gate_and_up_projs,down_projs} (native layout)
  kMtpEhProj,       // mtp eh_proj.weight
  kOther,
};

// kQkv: MiMo-V2.6's fused self_attn.qkv_proj (rows interleaved over the checkpoint TP degree).
enum class Projection { kNone, kQ, kK, kV, kO, kGate, kUp, kDown, kGateAndUp, kQkv };

struct TensorKey {
  std::string name;          // the full name as given
  std::string weight_name;   // for a scale: the weight it belongs to; else == name
  bool is_scale = false;     // ends in "_scale_inv", or is an MXFP4 expert's "weight_scale"
  bool is_mx_scale = false;  // "...mlp.experts.E.<proj>.weight_scale" (E8M0, MXFP4 experts)
  TensorKind kind = TensorKind::kOther;
  Projection projection = Projection::kNone;
  std::string prefix;  // text before "layers." (MTP: before "mtp.layers."), e.g. "model."
  std::optional<int64_t> layer;
  bool mtp = false;
  std::optional<int64_t> expert;
};

TensorKey classify_tensor_name(std::string_view name);
// For "...self_attn.{q,k,v}_proj.weight", the text up to and including "self_attn." (the names of
// the layer's other projections and scales are built on it).
std::string self_attn_prefix(std::string_view qkv_weight_name);
std::string_view tensor_kind_name(TensorKind kind) noexcept;
std::string_view projection_name(Projection p) noexcept;

}  // namespace moeckpt
