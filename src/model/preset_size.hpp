#pragma once
// Resizing a synth preset's config.json by the options (--layers, --experts, --vocab): the range
// checks and the fields every family sizes the same way.
#include <cstdint>

#include <nlohmann/json.hpp>

#include "moeckpt/model_spec.hpp"

namespace moeckpt {

// Refuses `v` outside [lo, hi], naming the option.
void check_preset_option(const char* what, int64_t v, int64_t lo, int64_t hi);
// The routed expert count (field `experts_field`; num_experts_per_tok capped to it) and
// vocab_size, where `size` gives them.
void resize_experts_and_vocab(nlohmann::json& config, const PresetSize& size,
                              const char* experts_field = "n_routed_experts");

}  // namespace moeckpt
