#pragma once
// MiMo-V2-Flash facts about single tensors: the HF shape a tensor must have under a config.
#include <cstdint>
#include <optional>
#include <vector>

#include "moeckpt/mimo_config.hpp"
#include "moeckpt/tensor_key.hpp"

namespace moeckpt {

// Attention dimensions of a layer: MTP layers are sliding-window layers.
const AttentionDims& attention_dims_of(const TensorKey& key, const MimoConfig& config);

// The shape the HF checkpoint holds for a (non-scale) tensor, or nullopt when the name is not one
// the config determines.
std::optional<std::vector<uint64_t>> expected_hf_shape(const TensorKey& key,
                                                       const MimoConfig& config);

}  // namespace moeckpt
