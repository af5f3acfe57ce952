#pragma once
// Reading a config.json's fields with one-line errors naming the file and the field: what every
// family's config parser uses.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moeckpt/error.hpp"
#include "moeckpt/model_config.hpp"

namespace moeckpt {

using nlohmann::json;

class FieldReader {
 public:
  FieldReader(const json& doc, const std::string& file) : doc_(doc), file_(file) {}

  // The cap keeps products of dimensions far from overflow; real values are orders smaller.
  int64_t positive(const char* key, int64_t max = int64_t{1} << 24) const {
    auto v = require(key);
    if (!v->is_number_integer() || v->get<int64_t>() <= 0 || v->get<int64_t>() > max)
      fail(ErrorKind::kMalformedFile, file_, "",
           std::string("config field \"") + key + "\" is " + v->dump(),
           "a positive integer of at most " + std::to_string(max));
    return v->get<int64_t>();
  }
  // A count that may be absent or null (then `fallback`): an integer in [0, max].
  int64_t count(const char* key, int64_t fallback, int64_t max = int64_t{1} << 24) const {
    auto v = doc_.find(key);
    if (v == doc_.end() || v->is_null()) return fallback;
    if (!v->is_number_integer() || v->get<int64_t>() < 0 || v->get<int64_t>() > max)
      fail(ErrorKind::kMalformedFile, file_, "",
           std::string("config field \"") + key + "\" is " + v->dump(),
           "a non-negative integer of at most " + std::to_string(max));
    return v->get<int64_t>();
  }
  bool boolean(const char* key, bool fallback) const {
    auto v = doc_.find(key);
    if (v == doc_.end() || v->is_null()) return fallback;
    if (!v->is_boolean())
      fail(ErrorKind::kMalformedFile, file_, "",
           std::string("config field \"") + key + "\" is " + v->dump(), "true or false");
    return v->get<bool>();
  }
  std::vector<int64_t> int_list(const char* key, size_t length) const {
    auto v = require(key);
    if (!v->is_array())
      fail(ErrorKind::kMalformedFile, file_, "",
           std::string("config field \"") + key + "\" is not a list", "a list of ints");
    if (v->size() != length)
      fail(
          ErrorKind::kMalformedFile, file_, "",
          std::string("config field \"") + key + "\" has " + std::to_string(v->size()) + " entries",
          std::to_string(length) + " (num_hidden_layers)");
    std::vector<int64_t> out;
    for (const auto& x : *v) {
      if (!x.is_number_integer() || (x.get<int64_t>() != 0 && x.get<int64_t>() != 1))
        fail(ErrorKind::kMalformedFile, file_, "",
             std::string("config field \"") + key + "\" holds " + x.dump(), "0 or 1");
      out.push_back(x.get<int64_t>());
    }
    return out;
  }
  json::const_iterator require(const char* key) const {
    auto v = doc_.find(key);
    if (v == doc_.end() || v->is_null())
      fail(ErrorKind::kMalformedFile, file_, "", std::string("config has no \"") + key + "\"");
    return v;
  }

 private:
  const json& doc_;
  const std::string& file_;
};

// What every family's config gives the same way: the document (`raw`), hidden_size,
// intermediate_size, the routed experts' width (`expert_width_field`), num_hidden_layers,
// vocab_size, tie_word_embeddings and quantization_config.weight_block_size; refuses a document
// that is not an object.
ModelConfig parse_common_fields(const json& doc, const std::string& file,
                                const char* expert_width_field = "moe_intermediate_size");

// The routed expert count (field `experts_field`, e.g. n_routed_experts or num_experts) and
// num_experts_per_tok (at most the former) into `c`.
void parse_routed_experts(const json& doc, const std::string& file, ModelConfig& c,
                          const char* experts_field = "n_routed_experts");

// quantization_config.weight_block_size (nullopt: the config has no quantization_config).
std::optional<BlockSize> parse_block_size(const json& doc, const std::string& file);

}  // namespace moeckpt
