#pragma once
// The DeepSeek-V3 checkpoint family (DeepSeek-V3, V3.1, R1; Moonshot's Kimi-K2): its config parser,
// spec and synth presets, as the registry (model/model_registry.cpp) finds them.
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "moeckpt/model_spec.hpp"

namespace moeckpt {

bool is_deepseek_model_type(std::string_view model_type);
ModelConfig parse_deepseek_config(const nlohmann::json& doc, const std::string& file);
std::unique_ptr<const ModelSpec> make_deepseek_spec(const ModelConfig& config);
const std::vector<std::string>& deepseek_preset_names();
std::optional<nlohmann::json> deepseek_preset(std::string_view name, const PresetSize& size);

}  // namespace moeckpt
