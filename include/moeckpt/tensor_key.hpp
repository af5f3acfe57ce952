#pragma once
// What a tensor is, as a family's spec classifies its name (ModelSpec::classify): kind, layer,
// expert, projection, prefix, and whether it is a scale companion.
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
  kAttentionBias,   // self_attn.{q,k,v,o}_proj.bias
  kDenseMlpProj,    // mlp.{gate,up,down}_proj.weight (dense layers, MTP)
  kRouter,          // mlp.gate.weight
  kRouterBias,      // mlp.gate.e_score_correction_bias
  kExpertProj,      // mlp.experts.E.{gate,up,down}_proj.weight (HF layout)
  kExpertBias,      // the routed experts' biases, [n_experts, out] per projection
  kGroupedExperts,  // mlp.experts.{gate_and_up_projs,down_projs} (native layout)
  kStackedExperts,  // an HF layout's unquantized stacked experts, [E, in, out] (the grouped layout)
  kMtpEhProj,       // mtp eh_proj.weight
  kSharedExpertProj,  // mlp.shared_experts.{gate,up,down}_proj.weight
  kMtpEmbedding,      // an MTP layer's own embed_tokens.weight
  kMtpHead,           // an MTP layer's own output head (shared_head.head.weight)
  kOther,
};

// kQkv: one fused q/k/v projection (rows interleaved over the checkpoint TP degree). kQA ... kKvB:
// latent attention's low-rank projections (q_a, q_b, kv_a with the shared rope key, kv_b).
enum class Projection {
  kNone,
  kQ,
  kK,
  kV,
  kO,
  kGate,
  kUp,
  kDown,
  kGateAndUp,
  kQkv,
  kQA,
  kQB,
  kKvA,
  kKvB
};

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

std::string_view tensor_kind_name(TensorKind kind) noexcept;
std::string_view projection_name(Projection p) noexcept;

}  // namespace moeckpt
