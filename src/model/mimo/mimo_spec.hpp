#pragma once
// The MiMo family (MiMo-V2-Flash, MiMo-V2.6, MiMo-V2.5-Pro): its config parser and spec, as the
// registry (model/model_registry.cpp) finds them.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "moeckpt/model_spec.hpp"

namespace moeckpt {

// model_type values of the family (a config without one is taken as MiMo-V2-Flash).
bool is_mimo_model_type(std::string_view model_type);
ModelConfig parse_mimo_config(const nlohmann::json& doc, const std::string& file);
std::unique_ptr<const ModelSpec> make_mimo_spec(const ModelConfig& config);
const std::vector<std::string>& mimo_preset_names();
std::optional<nlohmann::json> mimo_preset(std::string_view name, const PresetSize& size);

}  // namespace moeckpt
