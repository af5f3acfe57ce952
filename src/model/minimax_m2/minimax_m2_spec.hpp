#pragma once
// The MiniMax-M2 checkpoint family (model_type "minimax_m2": MiniMax-M2, MiniMax-M2.1, in
// their block-FP8 releases): its config parser, spec and synth presets, as
// the registry (model/model_registry.cpp) finds them.
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "moeckpt/model_spec.hpp"

namespace moeckpt {

bool is_minimax_m2_model_type(std::string_view model_type);
ModelConfig parse_minimax_m2_config(const nlohmann::json& doc, const std::string& file);
std::unique_ptr<const ModelSpec> make_minimax_m2_spec(const ModelConfig& config);
const std::vector<std::string>& minimax_m2_preset_names();
std::optional<nlohmann::json> minimax_m2_preset(std::string_view name, const PresetSize& size);

}  // namespace moeckpt
