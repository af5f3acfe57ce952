#include "core/strict_json.hpp"

#include <set>
#include <vector>

#include "moeckpt/error.hpp"

namespace moeckpt {
namespace {

constexpr int kMaxDepth = 128;

struct DuplicateKey {
  std::string key;
};
struct TooDeep {};

}  // namespace

nlohmann::json parse_strict_json(std::string_view text, const std::string& file,
                                 std::string_view what) {
  using nlohmann::json;
  std::vector<std::set<std::string>> keys_per_object;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) -> bool {
    if (depth > kMaxDepth) throw TooDeep{};
    switch (event) {
      case json::parse_event_t::object_start:
        keys_per_object.emplace_back();
        break;
      case json::parse_event_t::object_end:
        keys_per_object.pop_back();
        break;
      case json::parse_event_t::key: {
        auto key = parsed.get<std::string>();
        if (!keys_per_object.back().insert(key).second) throw DuplicateKey{std::move(key)};
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true,
                       /*ignore_comments=*/false);
  } catch (const DuplicateKey& d) {
    fail(file, "", std::string(what) + " has a duplicate key \"" + d.key + "\"", "each key once");
  } catch (const TooDeep&) {
    fail(file, "",
         std::string(what) + " is nested deeper than " + std::to_string(kMaxDepth) + " levels");
  } catch (const json::exception& e) {
    fail(file, "", std::string(what) + " is not valid JSON: " + e.what());
  }
}

}  // namespace moeckpt
