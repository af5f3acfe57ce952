#include "moeckpt/tensor_key.hpp"

namespace moeckpt {

std::string_view tensor_kind_name(TensorKind kind) noexcept {
  switch (kind) {
    case TensorKind::kEmbedding:
      return "embedding";
    case TensorKind::kLmHead:
      return "lm_head";
    case TensorKind::kFinalNorm:
      return "final_norm";
    case TensorKind::kNorm:
      return "norm";
    case TensorKind::kAttentionProj:
      return "attention_proj";
    case TensorKind::kAttentionSink:
      return "attention_sink";
    case TensorKind::kAttentionBias:
      return "attention_bias";
    case TensorKind::kDenseMlpProj:
      return "dense_mlp_proj";
    case TensorKind::kRouter:
      return "router";
    case TensorKind::kRouterBias:
      return "router_bias";
    case TensorKind::kExpertProj:
      return "expert_proj";
    case TensorKind::kExpertBias:
      return "expert_bias";
    case TensorKind::kGroupedExperts:
      return "grouped_experts";
    case TensorKind::kStackedExperts:
      return "stacked_experts";
    case TensorKind::kMtpEhProj:
      return "mtp_eh_proj";
    case TensorKind::kSharedExpertProj:
      return "shared_expert_proj";
    case TensorKind::kMtpEmbedding:
      return "mtp_embedding";
    case TensorKind::kMtpHead:
      return "mtp_head";
    case TensorKind::kOther:
      return "other";
  }
  return "other";
}

std::string_view projection_name(Projection p) noexcept {
  switch (p) {
    case Projection::kNone:
      return "";
    case Projection::kQ:
      return "q_proj";
    case Projection::kK:
      return "k_proj";
    case Projection::kV:
      return "v_proj";
    case Projection::kO:
      return "o_proj";
    case Projection::kGate:
      return "gate_proj";
    case Projection::kUp:
      return "up_proj";
    case Projection::kDown:
      return "down_proj";
    case Projection::kGateAndUp:
      return "gate_and_up_projs";
    case Projection::kQkv:
      return "qkv_proj";
    case Projection::kQA:
      return "q_a_proj";
    case Projection::kQB:
      return "q_b_proj";
    case Projection::kKvA:
      return "kv_a_proj_with_mqa";
    case Projection::kKvB:
      return "kv_b_proj";
  }
  return "";
}

}  // namespace moeckpt
