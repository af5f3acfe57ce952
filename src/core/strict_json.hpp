#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace moeckpt {

// Parses JSON refusing what lenient parsers let through: duplicate object keys (which would make
// the meaning depend on the parser) and nesting deeper than 128 levels (serde_json's limit).
// Errors name `file_for_errors`.
nlohmann::json parse_strict_json(std::string_view text, const std::string& file_for_errors,
                                 std::string_view what = "JSON");

}  // namespace moeckpt
