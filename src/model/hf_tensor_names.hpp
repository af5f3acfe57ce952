#pragma once
// The Hugging Face naming conventions the MoE checkpoint families share: "<prefix>layers.<L>."
// paths, model-level tensors, "_scale_inv" block-scale companions, per-expert and grouped expert
// names, and NeMo Automodel's expert key prefixes. Each family's grammar is built on these.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "moeckpt/tensor_key.hpp"

namespace moeckpt {

inline constexpr std::string_view kBlockScaleSuffix = "_scale_inv";

// Reads "<digits>." at the front of `s` (plain decimal, no sign or leading zeros) and drops it.
std::optional<int64_t> take_index(std::string_view& s);

// "<prefix>layers.<layer>.<rest>", split at the first "layers." that starts a path component.
struct LayerPath {
  std::string_view prefix;
  int64_t layer = 0;
  std::string_view rest;
};
std::optional<LayerPath> split_layer_path(std::string_view name);

// lm_head.weight, <prefix>embed_tokens.weight and <prefix>norm.weight: sets `k`'s kind and prefix
// (a name that is none of them leaves `k` unchanged).
void classify_model_level(std::string_view name, TensorKey& k);

// "<weight>_scale_inv" for a ".weight" (nullopt otherwise).
std::optional<std::string> block_scale_name_of(std::string_view weight);
// "<prefix>layers.<L>.mlp.experts.<E>.<proj>.weight" and ".mlp.experts.{gate_and_up,down}_projs".
std::string expert_weight_name_of(std::string_view prefix, int64_t layer, int64_t expert,
                                  Projection p);
std::string grouped_experts_name_of(std::string_view prefix, int64_t layer, Projection grouped);
// For "...self_attn.<proj>.weight", the text up to and including "self_attn.".
std::string self_attn_prefix(std::string_view attention_weight_name);
// The prefixes Automodel's expert key pattern accepts: (model.)?(language_model.)?
bool is_automodel_expert_prefix(std::string_view prefix);

}  // namespace moeckpt
