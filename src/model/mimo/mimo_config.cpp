#include "model/config_fields.hpp"
#include "model/mimo/mimo_spec.hpp"

#include "moeckpt/error.hpp"

namespace moeckpt {
using nlohmann::json;

ModelConfig parse_mimo_config(const json& doc, const std::string& file) {
  ModelConfig c = parse_common_fields(doc, file);
  FieldReader f(doc, file);
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

  if (c.moe_layer_count() > 0) parse_routed_experts(doc, file, c);

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

  return c;
}

}  // namespace moeckpt
