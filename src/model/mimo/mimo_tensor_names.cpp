#include "model/mimo/mimo_tensor_names.hpp"

#include "model/hf_tensor_names.hpp"

namespace moeckpt {
namespace {

bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}
bool starts_with(std::string_view s, std::string_view p) {
  return s.substr(0, p.size()) == p;
}

std::optional<Projection> proj_of(std::string_view s) {
  if (s == "q_proj") return Projection::kQ;
  if (s == "k_proj") return Projection::kK;
  if (s == "v_proj") return Projection::kV;
  if (s == "o_proj") return Projection::kO;
  if (s == "gate_proj") return Projection::kGate;
  if (s == "up_proj") return Projection::kUp;
  if (s == "down_proj") return Projection::kDown;
  if (s == "qkv_proj") return Projection::kQkv;
  return std::nullopt;
}

// Classifies what follows "layers.<L>.".
void classify_mimo_layer_rest(std::string_view rest, TensorKey& k) {
  static constexpr std::string_view kNorms[] = {"input_layernorm.weight",
                                                "post_attention_layernorm.weight",
                                                "pre_mlp_layernorm.weight",
                                                "enorm.weight",
                                                "hnorm.weight",
                                                "final_layernorm.weight"};
  for (auto n : kNorms)
    if (rest == n) {
      k.kind = TensorKind::kNorm;
      return;
    }
  if (rest == "eh_proj.weight") {
    k.kind = TensorKind::kMtpEhProj;
    return;
  }
  if (starts_with(rest, "self_attn.")) {
    auto r = rest.substr(10);
    if (r == "attention_sink_bias" || r == "attn_module.softmax_offset") {  // HF / TE naming
      k.kind = TensorKind::kAttentionSink;
      return;
    }
    if (ends_with(r, ".weight")) {
      auto p = proj_of(r.substr(0, r.size() - 7));
      if (p && (*p == Projection::kQ || *p == Projection::kK || *p == Projection::kV ||
                *p == Projection::kO || *p == Projection::kQkv)) {
        k.kind = TensorKind::kAttentionProj;
        k.projection = *p;
      }
    }
    return;
  }
  if (!starts_with(rest, "mlp.")) return;
  auto r = rest.substr(4);
  if (r == "gate.weight") {
    k.kind = TensorKind::kRouter;
    return;
  }
  if (r == "gate.e_score_correction_bias") {
    k.kind = TensorKind::kRouterBias;
    return;
  }
  if (starts_with(r, "experts.")) {
    auto e = r.substr(8);
    if (e == "gate_and_up_projs" || e == "down_projs") {
      k.kind = TensorKind::kGroupedExperts;
      k.projection = e == "down_projs" ? Projection::kDown : Projection::kGateAndUp;
      return;
    }
    auto id = take_index(e);
    if (!id || !ends_with(e, ".weight")) return;
    auto p = proj_of(e.substr(0, e.size() - 7));
    if (p && (*p == Projection::kGate || *p == Projection::kUp || *p == Projection::kDown)) {
      k.kind = TensorKind::kExpertProj;
      k.projection = *p;
      k.expert = *id;
    }
    return;
  }
  if (ends_with(r, ".weight")) {
    auto p = proj_of(r.substr(0, r.size() - 7));
    if (p && (*p == Projection::kGate || *p == Projection::kUp || *p == Projection::kDown)) {
      k.kind = TensorKind::kDenseMlpProj;
      k.projection = *p;
    }
  }
}

}  // namespace

TensorKey classify_tensor_name(std::string_view name) {
  TensorKey k;
  k.name = std::string(name);
  std::string_view w = name;
  if (ends_with(w, kBlockScaleSuffix)) {
    k.is_scale = true;
    w.remove_suffix(kBlockScaleSuffix.size());
  }
  k.weight_name = std::string(w);
  // "...mlp.experts.E.<proj>.weight_scale": an MXFP4 expert's E8M0 scales (checked below).
  const bool mx_candidate = !k.is_scale && ends_with(w, ".weight_scale");
  if (mx_candidate) w.remove_suffix(6);

  if (auto path = split_layer_path(w)) {
    std::string_view prefix = path->prefix;
    if (ends_with(prefix, "mtp.")) {
      k.mtp = true;
      prefix.remove_suffix(4);
    }
    k.prefix = std::string(prefix);
    k.layer = path->layer;
    classify_mimo_layer_rest(path->rest, k);
    if (mx_candidate) {
      if (k.kind == TensorKind::kExpertProj) {
        k.is_scale = k.is_mx_scale = true;
        k.weight_name = std::string(w);
      } else {  // any other "...weight_scale" is an ordinary tensor
        k = TensorKey{};
        k.name = k.weight_name = std::string(name);
      }
    }
    return k;
  }
  if (mx_candidate) return k;  // kOther
  classify_model_level(w, k);
  return k;
}

}  // namespace moeckpt
