#include "model/config_fields.hpp"

namespace moeckpt {

ModelConfig parse_common_fields(const json& doc, const std::string& file,
                                const char* expert_width_field) {
  if (!doc.is_object()) fail(ErrorKind::kMalformedFile, file, "", "config is not a JSON object");
  FieldReader f(doc, file);
  ModelConfig c;
  c.raw = doc;
  c.hidden_size = f.positive("hidden_size");
  c.intermediate_size = f.positive("intermediate_size");
  c.moe_intermediate_size = f.positive(expert_width_field);
  c.num_hidden_layers = f.positive("num_hidden_layers", 1 << 16);
  c.vocab_size = f.positive("vocab_size");
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.block = parse_block_size(doc, file);
  return c;
}

void parse_routed_experts(const json& doc, const std::string& file, ModelConfig& c,
                          const char* experts_field) {
  FieldReader f(doc, file);
  c.n_routed_experts = f.positive(experts_field);
  c.num_experts_per_tok = f.positive("num_experts_per_tok");
  if (c.num_experts_per_tok > c.n_routed_experts)
    fail(ErrorKind::kMalformedFile, file, "",
         "num_experts_per_tok = " + std::to_string(c.num_experts_per_tok) + " exceeds " +
             experts_field + " = " + std::to_string(c.n_routed_experts));
}

std::optional<BlockSize> parse_block_size(const json& doc, const std::string& file) {
  if (auto q = doc.find("quantization_config"); q != doc.end() && !q->is_null()) {
    if (!q->is_object())
      fail(ErrorKind::kMalformedFile, file, "", "quantization_config is not an object");
    auto bs = q->find("weight_block_size");
    if (bs == q->end() || !bs->is_array() || bs->size() != 2 || !(*bs)[0].is_number_integer() ||
        !(*bs)[1].is_number_integer() || (*bs)[0].get<int64_t>() <= 0 ||
        (*bs)[1].get<int64_t>() <= 0)
      fail(ErrorKind::kMalformedFile, file, "",
           "quantization_config.weight_block_size is missing or malformed",
           "[rows, cols] of positive integers, e.g. [128, 128]");
    // Block arithmetic multiplies block indices by these: a bound keeps it far from overflow.
    if ((*bs)[0].get<int64_t>() > kMaxBlockSize || (*bs)[1].get<int64_t>() > kMaxBlockSize)
      fail(ErrorKind::kMalformedFile, file, "",
           "quantization_config.weight_block_size [" + (*bs)[0].dump() + ", " + (*bs)[1].dump() +
               "] is larger than any block scaling uses",
           "block sides of at most " + std::to_string(kMaxBlockSize) + " (the published: 128)");
    return BlockSize{(*bs)[0].get<int64_t>(), (*bs)[1].get<int64_t>()};
  }
  return std::nullopt;
}

}  // namespace moeckpt
