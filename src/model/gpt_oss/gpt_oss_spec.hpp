#pragma once
// The gpt-oss checkpoint family (model_type "gpt_oss": openai/gpt-oss-20b and gpt-oss-120b, MXFP4
// experts): its config parser, spec and synth presets, as the registry (model/model_registry.cpp)
// finds them.
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "moeckpt/model_spec.hpp"

namespace moeckpt {

bool is_gpt_oss_model_type(std::string_view model_type);
ModelConfig parse_gpt_oss_config(const nlohmann::json& doc, const std::string& file);
std::unique_ptr<const ModelSpec> make_gpt_oss_spec(const ModelConfig& config);
const std::vector<std::string>& gpt_oss_preset_names();
std::optional<nlohmann::json> gpt_oss_preset(std::string_view name, const PresetSize& size);

}  // namespace moeckpt
