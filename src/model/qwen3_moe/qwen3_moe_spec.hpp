#pragma once
// The Qwen3-MoE checkpoint family (model_type "qwen3_moe": Qwen3-30B-A3B, Qwen3-235B-A22B,
// Qwen3-Coder-480B-A35B and their FP8 releases): its config parser, spec and synth presets, as
// the registry (model/model_registry.cpp) finds them.
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "moeckpt/model_spec.hpp"

namespace moeckpt {

bool is_qwen3_moe_model_type(std::string_view model_type);
ModelConfig parse_qwen3_moe_config(const nlohmann::json& doc, const std::string& file);
std::unique_ptr<const ModelSpec> make_qwen3_moe_spec(const ModelConfig& config);
const std::vector<std::string>& qwen3_moe_preset_names();
std::optional<nlohmann::json> qwen3_moe_preset(std::string_view name, const PresetSize& size);

}  // namespace moeckpt
