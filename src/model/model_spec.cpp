// What every family's spec derives the same way from its own answers.
#include "moeckpt/model_spec.hpp"

#include "model/hf_tensor_names.hpp"

namespace moeckpt {

std::optional<std::string> ModelSpec::block_scale_name(std::string_view weight) const {
  return block_scale_name_of(weight);
}
bool ModelSpec::is_block_scale(std::string_view name) const {
  return name.ends_with(kBlockScaleSuffix);
}
std::string ModelSpec::expert_weight_name(std::string_view prefix, int64_t layer, int64_t expert,
                                          Projection p) const {
  return expert_weight_name_of(prefix, layer, expert, p);
}
std::string ModelSpec::grouped_experts_name(std::string_view prefix, int64_t layer,
                                            Projection grouped) const {
  return grouped_experts_name_of(prefix, layer, grouped);
}
std::string ModelSpec::attention_weight_name(std::string_view weight, Projection p) const {
  return self_attn_prefix(weight) + std::string(projection_name(p)) + ".weight";
}
std::string ModelSpec::attention_prefix(std::string_view weight) const {
  return self_attn_prefix(weight);
}
bool ModelSpec::is_groupable_prefix(std::string_view prefix) const {
  return is_automodel_expert_prefix(prefix);
}
std::string ModelSpec::compat_expert_prefix() const {
  return "model.";
}

std::vector<uint64_t> ModelSpec::expert_hf_shape(Projection p) const {
  const auto D = static_cast<uint64_t>(config_.hidden_size);
  const auto I = static_cast<uint64_t>(config_.moe_intermediate_size);
  return p == Projection::kDown ? std::vector<uint64_t>{D, I} : std::vector<uint64_t>{I, D};
}
std::vector<ExpertGrouping> ModelSpec::expert_groupings() const {
  return {{Projection::kGateAndUp, {Projection::kGate, Projection::kUp}},
          {Projection::kDown, {Projection::kDown}}};
}

int64_t ModelSpec::checkpoint_tp(const std::map<std::string, std::string>& index_metadata,
                                 const std::string& index_file) const {
  if (auto fixed = fixed_checkpoint_tp()) return *fixed;
  return checkpoint_tp_size(index_metadata, index_file);
}

bool ModelSpec::layer_has_routed_experts(const TensorKey& key) const {
  if (!key.layer) return false;
  if (key.mtp) return mtp_layers_have_routed_experts();
  return *key.layer < config_.num_hidden_layers &&
         config_.layer_is_moe.at(static_cast<size_t>(*key.layer));
}

ExpertGrouping ModelSpec::expert_grouping(Projection grouped) const {
  for (auto& g : expert_groupings())
    if (g.grouped == grouped) return g;
  return {grouped, {}};
}

std::pair<uint64_t, uint64_t> ModelSpec::grouped_slot_shape(const ExpertGrouping& g) const {
  uint64_t in = 0, width = 0;
  for (Projection p : g.parts) {
    const auto shape = expert_hf_shape(p);
    width += shape[0];
    in = shape[1];
  }
  return {in, width};
}

}  // namespace moeckpt
