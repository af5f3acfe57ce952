// What every family's spec derives the same way from its own answers.
#include "moeckpt/model_spec.hpp"

namespace moeckpt {

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
