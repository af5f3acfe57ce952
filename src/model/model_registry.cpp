// The registered checkpoint families: a config's model_type picks the family whose rules parse it
// and whose spec describes its tensors. Adding a family adds one row here.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <array>

#include "core/strict_json.hpp"
#include "io/file.hpp"
#include "model/deepseek/deepseek_spec.hpp"
#include "model/glm4_moe/glm4_moe_spec.hpp"
#include "model/gpt_oss/gpt_oss_spec.hpp"
#include "model/mimo/mimo_spec.hpp"
#include "model/minimax_m2/minimax_m2_spec.hpp"
#include "model/qwen3_moe/qwen3_moe_spec.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/model_spec.hpp"

namespace moeckpt {
namespace {

struct Family {
  std::string_view name;
  std::string_view model_types;  // for the refusal message
  bool (*accepts)(std::string_view model_type);
  ModelConfig (*parse)(const nlohmann::json& doc, const std::string& file);
  std::unique_ptr<const ModelSpec> (*make)(const ModelConfig& config);
  const std::vector<std::string>& (*preset_names)();
  std::optional<nlohmann::json> (*preset)(std::string_view name, const PresetSize& size);
};

constexpr std::array kFamilies{
    Family{"mimo", "mimo_v2_flash, mimo_v2", is_mimo_model_type, parse_mimo_config, make_mimo_spec,
           mimo_preset_names, mimo_preset},
    Family{"deepseek", "deepseek_v3, kimi_k2", is_deepseek_model_type, parse_deepseek_config,
           make_deepseek_spec, deepseek_preset_names, deepseek_preset},
    Family{"qwen3_moe", "qwen3_moe", is_qwen3_moe_model_type, parse_qwen3_moe_config,
           make_qwen3_moe_spec, qwen3_moe_preset_names, qwen3_moe_preset},
    Family{"glm4_moe", "glm4_moe", is_glm4_moe_model_type, parse_glm4_moe_config,
           make_glm4_moe_spec, glm4_moe_preset_names, glm4_moe_preset},
    Family{"minimax_m2", "minimax_m2", is_minimax_m2_model_type, parse_minimax_m2_config,
           make_minimax_m2_spec, minimax_m2_preset_names, minimax_m2_preset},
    Family{"gpt_oss", "gpt_oss", is_gpt_oss_model_type, parse_gpt_oss_config, make_gpt_oss_spec,
           gpt_oss_preset_names, gpt_oss_preset},
};

const Family& family_named(std::string_view name) {
  for (const auto& f : kFamilies)
    if (f.name == name) return f;
  return kFamilies.front();  // a config built in code: the reference family
}

}  // namespace

int64_t ModelConfig::moe_layer_count() const noexcept {
  int64_t n = 0;
  for (bool m : layer_is_moe) n += m;
  return n;
}

ModelConfig ModelConfig::parse(const nlohmann::json& doc, const std::string& file) {
  std::string model_type;  // a config without one is taken as the reference family's
  if (doc.is_object())
    if (auto it = doc.find("model_type"); it != doc.end() && !it->is_null()) {
      if (!it->is_string())
        fail(ErrorKind::kMalformedFile, file, "", "config field \"model_type\" is " + it->dump(),
             "a string");
      model_type = it->get<std::string>();
    }
  std::vector<std::string_view> known;
  for (const auto& f : kFamilies) {
    if (f.accepts(model_type)) {
      ModelConfig c = f.parse(doc, file);
      c.family = std::string(f.name);
      return c;
    }
    known.push_back(f.model_types);
  }
  fail(ErrorKind::kUnsupportedLayout, file, "",
       fmt::format("model_type \"{}\" is not a checkpoint family moeckpt converts", model_type),
       fmt::format("one of: {}", fmt::join(known, ", ")));
}

bool ModelConfig::names_known_family(const nlohmann::json& doc) {
  std::string model_type;
  if (doc.is_object())
    if (auto it = doc.find("model_type"); it != doc.end() && !it->is_null()) {
      if (!it->is_string()) return false;
      model_type = it->get<std::string>();
    }
  for (const auto& f : kFamilies)
    if (f.accepts(model_type)) return true;
  return false;
}

ModelConfig ModelConfig::load(const std::filesystem::path& path) {
  auto text = io::read_small_file(path, kMaxConfigBytes);
  return parse(parse_strict_json(text, path.string(), "config"), path.string());
}

std::unique_ptr<const ModelSpec> model_spec_for(const ModelConfig& config) {
  return family_named(config.family).make(config);
}

std::vector<std::string> model_preset_names() {
  std::vector<std::string> out;
  for (const auto& f : kFamilies)
    for (const auto& n : f.preset_names()) out.push_back(n);
  return out;
}

nlohmann::json model_preset(std::string_view name, const PresetSize& size) {
  for (const auto& f : kFamilies)
    if (auto c = f.preset(name, size)) return *c;
  fail(ErrorKind::kInvalidArgument, "", "", fmt::format("unknown preset \"{}\"", name),
       fmt::format("one of: {}", fmt::join(model_preset_names(), ", ")));
}

const ModelSpec& reference_model_spec() {
  static const auto spec = model_spec_for(ModelConfig{});
  return *spec;
}

}  // namespace moeckpt
