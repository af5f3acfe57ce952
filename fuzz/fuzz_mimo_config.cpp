// config.json parsing on arbitrary bytes.
#include <cstdint>
#include <string_view>

#include "core/strict_json.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/model_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto doc = moeckpt::parse_strict_json(
        std::string_view(reinterpret_cast<const char*>(data), size), "config.json", "config");
    auto c = moeckpt::ModelConfig::parse(doc, "config.json");
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) (void)c.layer_attention_dims(l).q_rows();
  } catch (const moeckpt::Error&) {
  }
  return 0;
}
