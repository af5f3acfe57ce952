#include "model/preset_size.hpp"

#include <algorithm>
#include <string>

#include "moeckpt/error.hpp"

namespace moeckpt {

void check_preset_option(const char* what, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi)
    fail(ErrorKind::kInvalidArgument, "", "",
         std::string(what) + " = " + std::to_string(v) + " is out of range",
         std::to_string(lo) + ".." + std::to_string(hi));
}

void resize_experts_and_vocab(nlohmann::json& c, const PresetSize& o, const char* experts_field) {
  if (o.experts) {
    check_preset_option("experts", *o.experts, 1, 4096);
    c[experts_field] = *o.experts;
    c["num_experts_per_tok"] =
        std::min<int64_t>(c["num_experts_per_tok"].get<int64_t>(), *o.experts);
  }
  if (o.vocab) {
    check_preset_option("vocab", *o.vocab, 1, int64_t{1} << 22);
    c["vocab_size"] = *o.vocab;
  }
}

}  // namespace moeckpt
