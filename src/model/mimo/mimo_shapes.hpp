#pragma once
// MiMo facts about single tensors: the HF shape a tensor must have under a config, and the TE
// backend's sink name.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "moeckpt/model_config.hpp"
#include "moeckpt/tensor_key.hpp"

namespace moeckpt {

// Attention dimensions of a layer: MTP layers are sliding-window layers.
const AttentionDims& attention_dims_of(const TensorKey& key, const ModelConfig& config);

// The shape the HF checkpoint holds for a (non-scale) tensor, or nullopt when the name is not one
// the config determines.
std::optional<std::vector<uint64_t>> expected_hf_shape(const TensorKey& key,
                                                       const ModelConfig& config);

// Automodel's Transformer Engine naming (backend.attn == "te"): the native sink of a layer is
// "...self_attn.attn_module.softmax_offset" (F32) where HF has "...self_attn.attention_sink_bias".
inline constexpr std::string_view kHfSinkSuffix = "self_attn.attention_sink_bias";
inline constexpr std::string_view kTeSinkSuffix = "self_attn.attn_module.softmax_offset";
// The other naming of a sink name (HF <-> TE); nullopt for any other name.
std::optional<std::string> te_sink_name(std::string_view hf_name);
std::optional<std::string> hf_sink_name(std::string_view te_name);

}  // namespace moeckpt
