#include "model/mimo/mimo_shapes.hpp"

namespace moeckpt {

const AttentionDims& attention_dims_of(const TensorKey& key, const ModelConfig& c) {
  if (key.mtp || !key.layer || *key.layer >= c.num_hidden_layers) return c.swa;
  return c.layer_attention_dims(*key.layer);
}

std::optional<std::vector<uint64_t>> expected_hf_shape(const TensorKey& k, const ModelConfig& c) {
  using Shape = std::vector<uint64_t>;
  auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
  const uint64_t D = u(c.hidden_size);
  if (k.layer && !k.mtp && *k.layer >= c.num_hidden_layers) return std::nullopt;
  const auto& a = attention_dims_of(k, c);
  switch (k.kind) {
    case TensorKind::kEmbedding:
    case TensorKind::kLmHead:
      return Shape{u(c.vocab_size), D};
    case TensorKind::kFinalNorm:
    case TensorKind::kNorm:
      return Shape{D};
    case TensorKind::kAttentionProj:
      switch (k.projection) {
        case Projection::kQ:
          return Shape{u(a.q_rows()), D};
        case Projection::kK:
          return Shape{u(a.k_rows()), D};
        case Projection::kV:
          return Shape{u(a.v_rows()), D};
        case Projection::kO:
          return Shape{D, u(a.o_cols())};
        default:
          return std::nullopt;
      }
    case TensorKind::kAttentionSink:
      return Shape{u(a.num_heads)};
    case TensorKind::kDenseMlpProj:
      if (k.projection == Projection::kDown) return Shape{D, u(c.intermediate_size)};
      return Shape{u(c.intermediate_size), D};
    case TensorKind::kRouter:
      return Shape{u(c.n_routed_experts), D};
    case TensorKind::kRouterBias:
      return Shape{u(c.n_routed_experts)};
    case TensorKind::kExpertProj:
      if (k.projection == Projection::kDown) return Shape{D, u(c.moe_intermediate_size)};
      return Shape{u(c.moe_intermediate_size), D};
    case TensorKind::kMtpEhProj:
      return Shape{D, 2 * D};
    default:
      return std::nullopt;
  }
}

namespace {
std::optional<std::string> swap_suffix(std::string_view name, std::string_view from,
                                       std::string_view to) {
  if (!name.ends_with(from)) return std::nullopt;
  return std::string(name.substr(0, name.size() - from.size())) + std::string(to);
}
}  // namespace

std::optional<std::string> te_sink_name(std::string_view hf_name) {
  return swap_suffix(hf_name, kHfSinkSuffix, kTeSinkSuffix);
}
std::optional<std::string> hf_sink_name(std::string_view te_name) {
  return swap_suffix(te_name, kTeSinkSuffix, kHfSinkSuffix);
}

}  // namespace moeckpt
