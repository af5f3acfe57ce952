#pragma once
// The GLM-4.5 checkpoint family (model_type "glm4_moe": GLM-4.5, GLM-4.5-Air, GLM-4.6 and
// their FP8 releases): its config parser, spec and synth presets, as
// the registry (model/model_registry.cpp) finds them.
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "moeckpt/model_spec.hpp"

namespace moeckpt {

bool is_glm4_moe_model_type(std::string_view model_type);
ModelConfig parse_glm4_moe_config(const nlohmann::json& doc, const std::string& file);
std::unique_ptr<const ModelSpec> make_glm4_moe_spec(const ModelConfig& config);
const std::vector<std::string>& glm4_moe_preset_names();
std::optional<nlohmann::json> glm4_moe_preset(std::string_view name, const PresetSize& size);

}  // namespace moeckpt
