#include "model/mimo/mimo_spec.hpp"

#include "moeckpt/error.hpp"

namespace moeckpt {
namespace {

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

}  // namespace

ModelConfig parse_mimo_config(const json& doc, const std::string& file) {
  if (!doc.is_object()) fail(ErrorKind::kMalformedFile, file, "", "config is not a JSON object");
  FieldReader f(doc, file);
  ModelConfig c;
  c.raw = doc;
  c.hidden_size = f.positive("hidden_size");
  c.intermediate_size = f.positive("intermediate_size");
  c.moe_intermediate_size = f.positive("moe_intermediate_size");
  c.num_hidden_layers = f.positive("num_hidden_layers", 1 << 16);
  c.vocab_size = f.positive("vocab_size");
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  const auto layers = static_cast<size_t>(c.num_hidden_layers);

  for (auto p : f.int_list("hybrid_layer_pattern", layers))
    c.layer_attention.push_back(p == 0 ? AttentionKind::kFull : AttentionKind::kSlidingWindow);
  for (auto m : f.int_list("moe_layer_freq", layers)) c.layer_is_moe.push_back(m == 1);

  c.full = {f.positive("num_attention_heads"), f.positive("num_key_value_heads"),
            f.positive("head_dim"), f.positive("v_head_dim"),
            f.boolean("add_full_attention_sink_bias", false)};
  c.swa = {f.positive("swa_num_attention_heads"), f.positive("swa_num_key_value_heads"),
           f.positive("swa_head_dim"), f.positive("swa_v_head_dim"),
           f.boolean("add_swa_attention_sink_bias", false)};
  for (const auto* dims : {&c.full, &c.swa}) {
    const char* which = dims == &c.full ? "num_attention_heads" : "swa_num_attention_heads";
    if (dims->num_heads % dims->num_kv_heads != 0)
      fail(ErrorKind::kMalformedFile, file, "",
           std::string(which) + " = " + std::to_string(dims->num_heads) +
               " is not a multiple of its key/value head count " +
               std::to_string(dims->num_kv_heads));
  }

  if (c.moe_layer_count() > 0) {
    c.n_routed_experts = f.positive("n_routed_experts");
    c.num_experts_per_tok = f.positive("num_experts_per_tok");
    if (c.num_experts_per_tok > c.n_routed_experts)
      fail(ErrorKind::kMalformedFile, file, "",
           "num_experts_per_tok = " + std::to_string(c.num_experts_per_tok) +
               " exceeds n_routed_experts = " + std::to_string(c.n_routed_experts));
  }

  // The attention layout: "split" (MiMo-V2-Flash) or "fused_qkv" (the default of model_type
  // "mimo_v2", MiMo-V2.6; MiMo-V2.5-Pro, MiMoV25ForCausalLM, keeps it fused natively).
  const auto model_type = doc.find("model_type");
  const bool mimo_v2 =
      model_type != doc.end() && model_type->is_string() && *model_type == "mimo_v2";
  bool v25 = false;
  if (auto arch = doc.find("architectures"); arch != doc.end() && arch->is_array())
    for (const auto& a : *arch) v25 = v25 || (a.is_string() && a == "MiMoV25ForCausalLM");
  std::string layout = mimo_v2 && !v25 ? "fused_qkv" : "split";
  if (auto l = doc.find("attention_projection_layout"); l != doc.end() && !l->is_null()) {
    if (!l->is_string() || (*l != "split" && *l != "fused_qkv"))
      fail(ErrorKind::kMalformedFile, file, "",
           "config field \"attention_projection_layout\" is " + l->dump(),
           "\"split\" or \"fused_qkv\"");
    layout = l->get<std::string>();
  }
  c.fused_qkv = layout == "fused_qkv";
  c.fused_native = c.fused_qkv && v25;

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
    c.block = BlockSize{(*bs)[0].get<int64_t>(), (*bs)[1].get<int64_t>()};
  }
  return c;
}

}  // namespace moeckpt
