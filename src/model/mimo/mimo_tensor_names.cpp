#include "model/mimo/mimo_tensor_names.hpp"

#include <charconv>

namespace moeckpt {
namespace {

constexpr std::string_view kScaleSuffix = "_scale_inv";

bool starts_with(std::string_view s, std::string_view p) {
  return s.substr(0, p.size()) == p;
}
bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

// Reads "<digits>." at the front of `s`; plain decimal without sign or leading zeros.
std::optional<int64_t> take_index(std::string_view& s) {
  size_t dot = s.find('.');
  if (dot == 0 || dot == std::string_view::npos || dot > 9) return std::nullopt;
  auto digits = s.substr(0, dot);
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;
  int64_t v = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (ec != std::errc() || p != digits.data() + digits.size()) return std::nullopt;
  s.remove_prefix(dot + 1);
  return v;
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
void classify_layer_rest(std::string_view rest, TensorKey& k) {
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
  if (ends_with(w, kScaleSuffix)) {
    k.is_scale = true;
    w.remove_suffix(kScaleSuffix.size());
  }
  k.weight_name = std::string(w);
  // "...mlp.experts.E.<proj>.weight_scale": an MXFP4 expert's E8M0 scales (checked below).
  const bool mx_candidate = !k.is_scale && ends_with(w, ".weight_scale");
  if (mx_candidate) w.remove_suffix(6);

  // The first "layers." that starts a path component.
  size_t pos = 0;
  while ((pos = w.find("layers.", pos)) != std::string_view::npos) {
    if (pos == 0 || w[pos - 1] == '.') break;
    ++pos;
  }
  if (pos != std::string_view::npos) {
    std::string_view prefix = w.substr(0, pos);
    std::string_view rest = w.substr(pos + 7);
    auto layer = take_index(rest);
    if (layer) {
      if (ends_with(prefix, "mtp.")) {
        k.mtp = true;
        prefix.remove_suffix(4);
      }
      k.prefix = std::string(prefix);
      k.layer = layer;
      classify_layer_rest(rest, k);
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
  }
  if (mx_candidate) return k;  // kOther
  if (w == "lm_head.weight") {
    k.kind = TensorKind::kLmHead;
  } else if (ends_with(w, "embed_tokens.weight") && (w.size() == 19 || w[w.size() - 20] == '.')) {
    k.kind = TensorKind::kEmbedding;
    k.prefix = std::string(w.substr(0, w.size() - 19));
  } else if (ends_with(w, "norm.weight") && (w.size() == 11 || w[w.size() - 12] == '.')) {
    k.kind = TensorKind::kFinalNorm;
    k.prefix = std::string(w.substr(0, w.size() - 11));
  }
  return k;
}

std::string self_attn_prefix(std::string_view name) {
  constexpr std::string_view kSelfAttn = "self_attn.";
  const auto at = name.rfind(kSelfAttn);
  return std::string(name.substr(0, at == std::string_view::npos ? 0 : at + kSelfAttn.size()));
}

}  // namespace moeckpt
