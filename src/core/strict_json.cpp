#include "core/strict_json.hpp"

#include <string>
#include <unordered_set>
#include <vector>

#include "moeckpt/error.hpp"

namespace moeckpt {
namespace {

constexpr int kMaxDepth = 128;

struct DuplicateKey {
  std::string key;
};
struct TooDeep {};

// The DOM builder of nlohmann's own parse, plus duplicate-key and depth checks. (The callback
// parser these checks used before rescans a parent object at every nested object's end: quadratic
// in the number of tensors of a header.)
class StrictSax {
 public:
  using json = nlohmann::json;
  explicit StrictSax(json& out) : dom_(out, /*allow_exceptions=*/true) {}
  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(json::number_integer_t v) { return dom_.number_integer(v); }
  bool number_unsigned(json::number_unsigned_t v) { return dom_.number_unsigned(v); }
  bool number_float(json::number_float_t v, const json::string_t& s) {
    return dom_.number_float(v, s);
  }
  bool string(json::string_t& v) { return dom_.string(v); }
  bool binary(json::binary_t& v) { return dom_.binary(v); }
  bool start_object(std::size_t n) {
    enter();
    keys_.emplace_back();
    return dom_.start_object(n);
  }
  bool key(json::string_t& k) {
    if (!keys_.back().insert(k).second) throw DuplicateKey{k};
    return dom_.key(k);
  }
  bool end_object() {
    keys_.pop_back();
    --depth_;
    return dom_.end_object();
  }
  bool start_array(std::size_t n) {
    enter();
    return dom_.start_array(n);
  }
  bool end_array() {
    --depth_;
    return dom_.end_array();
  }
  bool parse_error(std::size_t pos, const std::string& token,
                   const nlohmann::detail::exception& e) {
    return dom_.parse_error(pos, token, e);
  }

 private:
  void enter() {
    if (++depth_ > kMaxDepth) throw TooDeep{};
  }
  nlohmann::detail::json_sax_dom_parser<json> dom_;
  std::vector<std::unordered_set<std::string>> keys_;
  int depth_ = 0;
};

}  // namespace

nlohmann::json parse_strict_json(std::string_view text, const std::string& file,
                                 std::string_view what) {
  using nlohmann::json;
  try {
    json out;
    StrictSax sax(out);
    json::sax_parse(text.begin(), text.end(), &sax, json::input_format_t::json, /*strict=*/true,
                    /*ignore_comments=*/false);
    return out;
  } catch (const DuplicateKey& d) {
    fail(ErrorKind::kMalformedFile, file, "",
         std::string(what) + " has a duplicate key \"" + d.key + "\"", "each key once");
  } catch (const TooDeep&) {
    fail(ErrorKind::kMalformedFile, file, "",
         std::string(what) + " is nested deeper than " + std::to_string(kMaxDepth) + " levels");
  } catch (const json::exception& e) {
    fail(ErrorKind::kMalformedFile, file, "",
         std::string(what) + " is not valid JSON: " + e.what());
  }
}

}  // namespace moeckpt
